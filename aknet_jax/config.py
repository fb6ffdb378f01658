"""Experiment configuration: the base config, config-string variants and validation.

Every `configs/<dataset>.py` starts from `base_config()`, sets its dataset and recipe, and applies
the user's config string (`configs/ssv2.py:backbone=tsm,stage=2`) with the variants it declares
(`apply_variants`); any field is also `--config.FIELD=VALUE`. `validate(config)` is the one place
that checks fields: every bad one becomes one `ValueError` line naming it.
"""

from __future__ import annotations

import ml_collections

from aknet_jax.config_variants import (MODEL_VARIANTS, apply_variants, frames_per_segment,
                                       set_backbone)  # noqa: F401  (the configs use these)

BACKBONES = ("tsn", "tsm", "tdn", "tea", "tada2d")
DEPTHS = (18, 34, 50, 101)
SPLITS = ("res2", "res3", "res4")
TRANSFORM_MODES = ("full", "lowrank", "none")
POINT_STRIDES = ("same", "squared")
RANKINGS = ("xyt", "score", "random")
Q_INITS = ("compact", "random")
STAGES = ("1", "2", "both")
OPTIMIZERS = ("sgd", "adam")
LR_POLICIES = ("tsm", "uniform")
TRAIN_AUGMENTS = ("tsm_multiscale", "paper")

def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with the TSM Something-Something recipe as defaults."""
  c = ml_collections.ConfigDict()
  c.stage = "both"  # '1' backbone only, '2' AK-Net only (from a stage-1/converted checkpoint), 'both'.
  c.half_precision = False  # bf16 compute, fp32 params.
  # A checkpoint to start from: stage 1 takes the variables it has (e.g. converted ImageNet
  # weights); stage 2 compacts it (a stage-1 or converted TSM/TDN checkpoint). '' = default.
  c.init_from = ""

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "tsm"
  c.model.depth = 50
  c.model.width = 64  # Base width of the ResNet (64 = the standard nets).
  c.model.dropout = 0.5  # Before the classifier (TSN wrapper), and before AK-Net's head.
  c.model.shift_div = 8  # TSM / TDN shift: 1/shift_div of the channels each way.
  c.model.partial_bn = False  # TSN partial BN: freeze every BN but the stem's.
  c.model.bn_momentum = 0.9  # Flax convention; = PyTorch momentum 0.1.
  c.model.aknet = ml_collections.ConfigDict()
  c.model.aknet.split = "res4"
  c.model.aknet.alpha = 0.3
  c.model.aknet.tau = -1.0  # <= 0 means h + w of the split's feature map.
  c.model.aknet.transform_mode = "full"
  c.model.aknet.transform_rank = 64
  c.model.aknet.se_reduction = 16
  # Q's stride-2 blocks on the point sequence: 'same' halves the points, 'squared' divides them
  # by 4 as the 2D stage divides its positions. The base config is the paper's AK-Net; the
  # dataset configs take the measured defaults (`measured_aknet`).
  c.model.aknet.point_stride = "same"
  # Ablation switches (the paper's Tables IV-VI); the defaults are the paper's model.
  c.model.aknet.ranking = "xyt"  # 'score': top-k order (no ranking); 'random': a fixed shuffle.
  c.model.aknet.concat_global = True  # Head input concat(GAP(X), e); False: e alone.
  c.model.aknet.position_embedding = False  # Learned embedding of (x, y, t) added to the points.
  c.model.aknet.q_init = "compact"  # 'random': Q not initialised from the 2D stages (eq. 11).
  c.model.aknet.aux_head = True  # False: no auxiliary head or loss.
  c.model.aknet.reg_weight = 1.0  # lambda_e on the heatmap regulariser r_e.

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "synthetic_something"
  c.dataset.builder_config = ""  # TFDS builder config name ('' = the builder's default).
  c.dataset.data_dir = ""  # '' = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  c.dataset.num_classes = 174
  c.dataset.num_segments = 8
  c.dataset.frames_per_segment = 1  # 5 for TDN (set automatically by the dataset configs).
  c.dataset.image_size = 224  # Crop fed to the network.
  c.dataset.resize_short = 256  # Eval: short side resized to this, then a centre crop.
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.dataset.flip = False  # Horizontal flip in training (off where it changes the label).
  c.dataset.shuffle_buffer = 1024
  c.dataset.prefetch = 2
  # Train crop: 'tsm_multiscale' = TSM's GroupMultiScaleCrop over `scales`, then resize to
  # image_size; 'paper' = AK-Net §IV-A: resize to 256 x 256 (aspect ignored; 256 * image_size // 224
  # for other sizes), one random image_size² crop. Both: one box per clip, then the flip.
  c.dataset.train_augment = "tsm_multiscale"
  c.dataset.scales = (1.0, 0.875, 0.75, 0.66)  # Multi-scale crop (TSM GroupMultiScaleCrop).
  c.dataset.has_masks = False  # Per-frame target masks (synthetic only): keypoint precision.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # Global, over all hosts and devices.
  c.train.num_epochs = 50
  c.train.num_steps = 0  # > 0 overrides num_epochs.
  c.train.stage2_num_steps = 0  # > 0: stage 2's own step count (else = stage 1's).
  c.train.optimizer = "sgd"
  c.train.learning_rate = 0.01
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4  # Coupled L2, as PyTorch SGD/Adam weight_decay.
  c.train.lr_steps = (20, 40)  # Epochs (or fractions of num_steps when num_steps > 0, see optim).
  c.train.lr_decay = 0.1
  c.train.warmup_steps = 0
  c.train.grad_accum_steps = 1  # > 1: each device's batch in this many sequential micro-batches.
  # The lr is the recipe's for `recipe_batch_size` clips; with scale_lr_with_batch a run of another
  # global batch takes lr x batch / recipe_batch_size (the TSM authors' linear rule).
  c.train.recipe_batch_size = 64
  c.train.scale_lr_with_batch = False
  c.train.grad_clip = 20.0  # Global-norm clipping; <= 0 disables.
  c.train.lr_policy = "tsm"  # 'tsm': BN/bias no decay, new fc x5/x10; 'uniform': TDN style.
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 0  # 0 = only at the end of each stage.
  c.train.seed = 0
  # 'trained': stage 2 compacts the trained stage 1 (the paper's schedule); 'init': it compacts
  # stage 1's initialisation instead (a one-stage control: AK-Net trained once, from the start).
  c.train.stage2_from = "trained"
  c.train.profile_steps = 0  # > 0: a jax.profiler trace of this many steps into the stage's dir.

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16  # Global.
  c.eval.num_clips = 1
  c.eval.num_crops = 1  # 1 = centre crop; 3 = left/centre/right (TSM test protocol).
  c.eval.checkpoint = ""  # --mode=eval: a checkpoint step or directory ('' = latest).
  c.eval.num_keypoint_images = 4
  return c


def measured_aknet(c: ml_collections.ConfigDict):
  """The AK-Net that is cheaper than its baseline in measured time: no transform net and the
  squared point stride. AK-Net-TSM (ResNet-50, 8 x 224², 2-core CPU; README, "Defaults"): MACs
  0.853 of TSM's, latency 0.86 (batch 1) / 0.85 (batch 8), training step 1.02x; the paper's full
  transform pays a 1.08 GB weight read per call and 1.36x TSM's training step."""
  c.model.aknet.transform_mode = "none"
  c.model.aknet.point_stride = "squared"


def something_something_recipe(c: ml_collections.ConfigDict):
  """SGD 0.01, 50 epochs, x0.1 at 20/40, wd 5e-4, clip 20, dropout 0.5, batch 64, no flip."""
  c.train.optimizer = "sgd"
  c.train.learning_rate = 0.01
  c.train.num_epochs = 50
  c.train.lr_steps = (20, 40)
  c.train.weight_decay = 5e-4
  c.train.grad_clip = 20.0
  c.train.batch_size = 64
  c.model.dropout = 0.5
  c.model.partial_bn = False  # Off in every official Something-Something recipe.
  c.dataset.flip = False  # Left/right classes: TSM never flips Something-Something.


def tea_recipe(c: ml_collections.ConfigDict):
  """TEA on Something-Something as Phoenix1327/tea-action-recognition's
  scripts/train_tea_something_rgb_8f.sh (its only Something script, V1): lr 0.02 for 64 clips,
  x0.1 at 30/40/45 of 50 epochs; wd 5e-4, clip 20, dropout 0.5, no partial BN, TSM's lr policy
  as something_something_recipe has them."""
  c.train.learning_rate = 0.02
  c.train.lr_steps = (30, 40, 45)


def tada2d_recipe(c: ml_collections.ConfigDict):
  """TAda2D on SSV2 as alibaba-mmai-research/TAdaConv configs/projects/tada/tada2d_ssv2.yaml
  (+ configs/pool/base.yaml): SGD lr 0.48 for 128 clips, 64 epochs, wd 1e-4 (BN undecayed), no lr
  multipliers, dropout 0.5, 4 warmup epochs. Not expressible here, so left as the TSM recipe has
  them: its cosine schedule (lr_steps stay 20/40), Nesterov momentum, its label-swapping flip."""
  c.train.learning_rate = 0.48
  c.train.batch_size = c.train.recipe_batch_size = 128
  c.train.num_epochs = 64
  c.train.weight_decay = 1e-4
  c.train.warmup_steps = 4 * -(-168_913 // 128)  # 4 epochs of SSV2's 168,913 training videos.
  c.model.dropout = 0.5


def backbone_with_recipes(recipes: dict):
  """The `backbone=NAME` variant that also applies `recipes[NAME]` (a dataset's official recipe
  for that backbone, e.g. {'tea': tea_recipe})."""
  def set_with_recipe(c: ml_collections.ConfigDict, name: str):
    set_backbone(c, name)
    if name in recipes:
      recipes[name](c)
  return set_with_recipe


def finish(c: ml_collections.ConfigDict, arg: str | None,
           variants: dict | None = None) -> ml_collections.ConfigDict:
  """Sets the backbone's recipe, applies the config string with `variants` and validates."""
  set_backbone(c, c.model.backbone)
  apply_variants(c, arg, variants if variants is not None else MODEL_VARIANTS)
  return validate(c)


def _check(ok: bool, field: str, message: str):
  if not ok:
    raise ValueError(f"config.{field}: {message}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ValueError naming the first invalid field; returns the config unchanged."""
  m, a, d, t, e = config.model, config.model.aknet, config.dataset, config.train, config.eval
  _check(str(config.stage) in STAGES, "stage", f"{config.stage!r} is not one of {STAGES}")
  _check(m.backbone in BACKBONES, "model.backbone", f"{m.backbone!r} is not one of {BACKBONES}")
  _check(m.depth in DEPTHS, "model.depth", f"{m.depth!r} is not one of {DEPTHS}")
  if m.backbone in ("tdn", "tea", "tada2d"):
    _check(m.depth in (50, 101), "model.depth",
           f"{m.depth!r}, but backbone {m.backbone!r} needs a bottleneck ResNet (50 or 101)")
  _check(m.width >= 8 and m.width % 8 == 0, "model.width",
         f"{m.width!r} must be a multiple of 8 and >= 8 (64 = standard ResNet)")
  _check(0.0 <= m.dropout < 1.0, "model.dropout", f"{m.dropout!r} must be in [0, 1)")
  _check(m.shift_div >= 2, "model.shift_div", f"{m.shift_div!r} must be >= 2")
  _check(a.split in SPLITS, "model.aknet.split", f"{a.split!r} is not one of {SPLITS}")
  _check(0.0 < a.alpha <= 1.0, "model.aknet.alpha", f"{a.alpha!r} must be in (0, 1]")
  _check(a.transform_mode in TRANSFORM_MODES, "model.aknet.transform_mode",
         f"{a.transform_mode!r} is not one of {TRANSFORM_MODES}")
  _check(a.point_stride in POINT_STRIDES, "model.aknet.point_stride",
         f"{a.point_stride!r} is not one of {POINT_STRIDES}")
  _check(a.ranking in RANKINGS, "model.aknet.ranking", f"{a.ranking!r} is not one of {RANKINGS}")
  _check(a.q_init in Q_INITS, "model.aknet.q_init", f"{a.q_init!r} is not one of {Q_INITS}")
  _check(a.transform_rank >= 1, "model.aknet.transform_rank", f"{a.transform_rank!r} must be >= 1")
  _check(a.tau <= 0 or a.tau > 1, "model.aknet.tau", f"{a.tau!r} must be > 1 (or <= 0 for h + w)")
  _check(a.reg_weight >= 0, "model.aknet.reg_weight", f"{a.reg_weight!r} must be >= 0")
  _check(d.num_classes >= 2, "dataset.num_classes", f"{d.num_classes!r} must be >= 2")
  _check(d.num_segments >= 1, "dataset.num_segments", f"{d.num_segments!r} must be >= 1")
  want_l = frames_per_segment(m.backbone)
  _check(d.frames_per_segment == want_l, "dataset.frames_per_segment",
         f"{d.frames_per_segment!r}, but backbone {m.backbone!r} takes {want_l} frame(s) per segment")
  _check(d.image_size >= 32 and d.image_size % 32 == 0, "dataset.image_size",
         f"{d.image_size!r} must be a multiple of 32 (the backbone's total stride), e.g. 224")
  _check(d.train_augment in TRAIN_AUGMENTS, "dataset.train_augment",
         f"{d.train_augment!r} is not one of {TRAIN_AUGMENTS}")
  _check(d.resize_short >= d.image_size, "dataset.resize_short",
         f"{d.resize_short!r} must be >= dataset.image_size ({d.image_size})")
  _check(t.batch_size >= 1, "train.batch_size", f"{t.batch_size!r} must be >= 1")
  _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", f"{t.grad_accum_steps!r} must be >= 1")
  _check(t.recipe_batch_size >= 1, "train.recipe_batch_size",
         f"{t.recipe_batch_size!r} must be >= 1")
  _check(t.num_steps >= 0, "train.num_steps", f"{t.num_steps!r} must be >= 0")
  _check(t.num_steps > 0 or t.num_epochs > 0, "train.num_epochs",
         "set train.num_epochs > 0 or train.num_steps > 0")
  _check(t.optimizer in OPTIMIZERS, "train.optimizer", f"{t.optimizer!r} is not one of {OPTIMIZERS}")
  _check(t.learning_rate > 0, "train.learning_rate", f"{t.learning_rate!r} must be > 0")
  _check(t.weight_decay >= 0, "train.weight_decay", f"{t.weight_decay!r} must be >= 0")
  _check(0 < t.lr_decay <= 1, "train.lr_decay", f"{t.lr_decay!r} must be in (0, 1]")
  _check(t.lr_policy in LR_POLICIES, "train.lr_policy", f"{t.lr_policy!r} is not one of {LR_POLICIES}")
  _check(t.stage2_from in ("trained", "init"), "train.stage2_from",
         f"{t.stage2_from!r} is not one of ('trained', 'init')")
  _check(t.profile_steps >= 0, "train.profile_steps", f"{t.profile_steps!r} must be >= 0")
  _check(t.checkpoint_every_steps >= 1, "train.checkpoint_every_steps",
         f"{t.checkpoint_every_steps!r} must be >= 1")
  _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"{t.keep_checkpoints!r} must be >= 1")
  _check(e.batch_size >= 1, "eval.batch_size", f"{e.batch_size!r} must be >= 1")
  _check(e.num_clips >= 1, "eval.num_clips", f"{e.num_clips!r} must be >= 1")
  _check(e.num_crops in (1, 3), "eval.num_crops", f"{e.num_crops!r} is not one of (1, 3)")
  return config

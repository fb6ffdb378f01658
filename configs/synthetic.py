"""synthetic_something: the laptop benchmark, both stages in minutes on a CPU.

A TSM ResNet-18 of base width 16 on 8 x 64² frames; 8 motion classes in time-reversal pairs.
AK-Net splits after res3 with alpha 0.1: at 64² the res4 map is 4x4 cells of 16 px, too coarse for a
~10 px target (res4, alpha 0.3 costs more MACs than res5 it replaces and only doubles the chance
rate of landing on the target; res3, alpha 0.1 saves 12 % of the MACs and lands ~9x chance).
Variants (`VARIANTS`): `configs/synthetic.py:backbone=tsn` (the time-reversal ceiling), `tiny`
(CI-sized), `tiny,stage=1,steps=8`, `hard` (the 16-class builder config that separates the
ablation rows, docs/ablation.md); any field: `--config.FIELD=VALUE`.
"""

from aknet_jax import config as config_lib


def _tiny(c):
  """A few steps on the tiny builder config: for tests and smoke runs."""
  c.dataset.builder_config = "tiny"
  c.dataset.num_segments = 4
  c.dataset.image_size = 32
  c.dataset.resize_short = 32
  c.model.width = 8
  c.train.batch_size = 4
  c.train.num_steps = 4
  c.train.stage2_num_steps = 4
  c.train.log_every_steps = 2
  c.train.checkpoint_every_steps = 2
  c.eval.batch_size = 4
  c.eval.num_keypoint_images = 2


def _hard(c):
  """The `hard` builder config: 16 classes, a smaller target, target-coloured distractors,
  occlusion, variable speed (chance 1/16)."""
  c.dataset.builder_config = "hard"
  c.dataset.num_classes = 16


VARIANTS = {
    **config_lib.MODEL_VARIANTS,
    "tiny": _tiny,
    "hard": _hard,
    "width": "model.width",
    "dropout": "model.dropout",
    "batch": "train.batch_size",
    "steps": "train.num_steps",
    "seed": "train.seed",
}


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "synthetic_something"
  c.dataset.builder_config = "default"
  c.dataset.num_classes = 8
  c.dataset.num_segments = 8
  c.dataset.image_size = 64
  c.dataset.resize_short = 64
  c.dataset.scales = (1.0, 0.875, 0.75)
  c.dataset.shuffle_buffer = 512
  c.model.depth = 18
  c.model.width = 16
  c.model.dropout = 0.2
  c.model.aknet.split = "res3"
  c.model.aknet.alpha = 0.1
  c.model.aknet.transform_mode = "lowrank"
  c.model.aknet.transform_rank = 16
  c.train.batch_size = 16
  c.train.num_steps = 600  # Stage 2 the same 600 steps: the paper fine-tunes with stage 1's schedule.
  c.train.optimizer = "sgd"
  c.train.learning_rate = 0.05
  c.train.warmup_steps = 50
  c.train.lr_steps = (35, 45)  # Of 50 "epochs": x0.1 at 70 % and 90 % of the steps.
  c.train.num_epochs = 50
  c.train.weight_decay = 1e-4
  c.train.checkpoint_every_steps = 200
  c.train.log_every_steps = 50
  c.eval.batch_size = 32
  return config_lib.finish(c, arg, VARIANTS)

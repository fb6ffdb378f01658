"""TAda2D (TAdaConv) against our torch reference (`aknet_jax.torch_reference_tada`, written after
the official code with its module names): logits through the convert path, compaction into
AK-Net, the convert CLI and its one-line errors, the MACs, the recipe variants.

The reference calibrates the kernels (one grouped conv2d, a kernel per frame) and pools with
Conv3d / AvgPool3d; ours scales the input channels and pads by hand: they share the method only.
"""

import os

import jax
import numpy as np
import pytest

from aknet_jax import config as config_lib
from aknet_jax import models
from aknet_jax.checkpoints import tada_layout
from aknet_jax.checkpoints.torch_layout import torch_to_variables
from aknet_jax.models import tada
from conftest import load_config
from test_compaction import _check_copied, random_stage1, tiny_config
from test_convert import _cli, _error, _variables

T, K = 4, 5


def _lib():
  pytest.importorskip("torch")
  from aknet_jax import torch_reference_tada  # pylint: disable=g-import-not-at-top (torch extra)
  return torch_reference_tada


def _config(width=8, t=T, k=K):
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.width, c.model.dropout = "tada2d", 50, width, 0.0
  c.dataset.num_segments, c.dataset.num_classes, c.dataset.image_size = t, k, 64
  return c


def test_temporal_avg_pool_matches_torch_avgpool3d():
  lib = _lib()
  x = np.random.RandomState(0).randn(2 * T, 3, 5, 6).astype(np.float32)
  pool = lib.nn.AvgPool3d((3, 1, 1), stride=1, padding=(1, 0, 0))
  want = pool(lib.torch.from_numpy(x.reshape(2, T, 3, 5, 6).transpose(0, 4, 1, 2, 3)))
  got = np.asarray(tada.temporal_avg_pool(jax.numpy.asarray(x), T))
  np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 4, 1).reshape(x.shape),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [64, 40])
def test_tada2d_parity_with_converted_torch_reference(size):
  """Whole TAda2D-R50 (width 8) from official keys (a `model_state`, `module.` prefixed as a
  DataParallel model saves it), eval- and train-mode BN; alpha != 1 and the aggregation BN != 0.
  40 px leaves odd maps (20, 10, 5, 3): the strided layer1 and ceil-mode sizes must agree."""
  lib = _lib()
  torch = lib.torch
  clips, width = 2, 8
  ref = lib.tada2d(50, width, K, seed=0).eval()
  state = {f"module.{k}": v for k, v in ref.state_dict().items()}
  assert {"module.backbone.conv1.a.weight", "module.backbone.conv2.res_1.short_cut.weight",
          "module.backbone.conv5.res_3.conv_branch.b_rf.a.weight",
          "module.backbone.conv3.res_2.conv_branch.b_avgpool_bn.running_var",
          "module.head.out.weight"} <= set(state)
  config = _config(width)
  variables = torch_to_variables(tada_layout.to_canonical(state), config)
  frames = np.random.RandomState(1).randn(clips, T, size, size, 3).astype(np.float32)
  model = models.build(config, "video_net")
  with jax.default_matmul_precision("highest"):
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, frames)
    got_train, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, frames)
  with torch.no_grad():
    want = ref(frames).numpy()
    want_train = ref.train()(frames).numpy()
  for name, a, b in (("eval", got, want), ("train", got_train["logits"], want_train)):
    err = np.abs(np.asarray(a) - b).max() / np.abs(b).max()
    print(f"tada2d-R50 width {width} {size} px {name}: max |diff| / max |logit| = {err:.1e}")
    assert err < 1e-4, (name, err)


@pytest.mark.slow
def test_compacted_tada2d_net_drops_calibration_and_aggregation_in_q():
  config1, config2 = tiny_config("tada2d", 50, "1"), tiny_config("tada2d", 50, "2")
  # A fresh stage-1 net (random_stage1's N(0, 0.2) kernels blow up through the calibration's
  # product alpha * h), its BN statistics and route functions made non-trivial.
  stage1 = jax.device_get(models.init_variables(config1, "video_net", jax.random.key(2)))
  # Fresh, as the official code starts: alpha = 1 (route conv b = 0), bn2_avgpool = 0.
  block = stage1["params"]["backbone"]["layer3_1"]
  np.testing.assert_array_equal(block["conv2_rf"]["b"]["kernel"], 0.0)
  np.testing.assert_array_equal(block["bn2_avgpool"]["scale"], 0.0)
  np.testing.assert_array_equal(block["bn2_avgpool"]["bias"], 0.0)
  assert "conv2_rf" in stage1["params"]["backbone"]["layer1_0"]  # Every block, layer1 included.
  noise = random_stage1(config1, seed=1)
  stage1["batch_stats"] = noise["batch_stats"]
  for name, block in stage1["params"]["backbone"].items():
    if "conv2_rf" in block:
      block["conv2_rf"]["b"]["kernel"] = 0.1 * noise["params"]["backbone"][name]["conv2_rf"]["b"][
          "kernel"]
  stage2 = models.compact(stage1, config2, jax.random.key(0))
  _, dst = _check_copied(stage1, stage2)
  q = stage2["params"]["points"]["layer4_0"]
  assert set(q) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv",
                    "downsample_bn"}
  assert dst[("points", "layer4_0", "conv2", "kernel")].shape == (3, 64, 64)
  frames = jax.random.normal(jax.random.key(1), models.input_shape(config2))
  logits = jax.jit(lambda v, x: models.build(config2, "aknet").apply(v, x, train=False))(stage2,
                                                                                         frames)
  assert logits.shape == (1, 5) and np.all(np.isfinite(np.asarray(logits)))


def _official_file(tmp_path, k):
  lib = _lib()
  ref = lib.tada2d(50, 8, k, seed=3)
  # As TAdaConv's save_checkpoint writes it: the bare model's keys under 'model_state'.
  ckpt = {"epoch": 63, "model_state": ref.state_dict(), "optimizer_state": {"state": {}},
          "cfg": "MODEL:\n  NAME: TAda2D\n"}
  lib.torch.save(ckpt, tmp_path / "tada2d.pyth")
  return ref.state_dict(), tmp_path / "tada2d.pyth"


def test_tada2d_checkpoint_through_the_cli(tmp_path):
  config = "tiny,backbone=tada2d,depth=50"
  cfg = load_config("synthetic", config + ",stage=1")
  state, path = _official_file(tmp_path, cfg.dataset.num_classes)
  out = _cli("tada2d", path, config, tmp_path / "run")
  assert out.returncode == 0, out.stderr[-3000:]
  variables, meta = _variables(str(tmp_path / "run" / "stage1" / "checkpoints" / "0"))
  assert meta["converted_from"]["source"] == "tada2d"
  direct = torch_to_variables(tada_layout.to_canonical(state), cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables,
                         jax.tree_util.tree_map(np.asarray, direct))


def test_tada2d_source_errors(tmp_path):
  _, path = _official_file(tmp_path, 8)
  msg = _error("tada2d", path, "tiny,depth=50", tmp_path / "a")
  assert msg.startswith("--source=tada2d needs a TAda2D config") and "backbone=tada2d" in msg
  for source in ("tsm", "torchvision"):
    msg = _error(source, path, "tiny,backbone=tada2d,depth=50", tmp_path / "b")
    assert "is a TAda2D checkpoint" in msg and "--source=tada2d" in msg
  lib = _lib()
  lib.torch.save({"state_dict": {"conv1.weight": lib.torch.zeros(8, 3, 7, 7)}}, tmp_path / "r.pth")
  msg = _error("tada2d", tmp_path / "r.pth", "tiny,backbone=tada2d,depth=50", tmp_path / "c")
  assert "has no TAda2D modules" in msg
  msg = _error("tada2d", path, "tiny,backbone=tada2d,depth=101", tmp_path / "d")
  assert msg.startswith("checkpoint: missing key 'layer3.") and "depth 101" in msg
  assert not os.path.exists(tmp_path / "d")


def test_tada2d_macs_match_the_paper_at_its_test_crop():
  """TAdaConv's 43 G is counted at its test crop, 8 x 256^2; at 224^2 the net is ~32 G."""
  from aknet_jax import macs  # pylint: disable=g-import-not-at-top
  at_256 = models.gmacs(macs.row_config("tada2d", None, image_size=256), "video_net")
  assert abs(at_256 / macs.PAPER_GFLOPS[("tada2d", None)] - 1) < 0.05
  tsm = models.gmacs(macs.row_config("tsm", None), "video_net")
  assert 0 < models.gmacs(macs.row_config("tada2d", None), "video_net") - tsm < 1.0


def test_recipe_variants():
  ssv2 = load_config("ssv2", "backbone=tada2d")
  t = ssv2.train
  assert (t.learning_rate, t.batch_size, t.recipe_batch_size, t.num_epochs, t.weight_decay) == (
      0.48, 128, 128, 64, 1e-4)
  assert t.warmup_steps == 4 * 1320 and t.lr_policy == "uniform" and ssv2.model.dropout == 0.5
  assert ssv2.dataset.frames_per_segment == 1 and ssv2.model.backbone == "tada2d"
  ssv1 = load_config("ssv1", "backbone=tada2d")  # No official SSV1 recipe: TSM's, lr x1.
  assert (ssv1.train.learning_rate, ssv1.train.lr_policy) == (0.01, "uniform")
  assert load_config("ssv2", "backbone=tsm").train.learning_rate == 0.01

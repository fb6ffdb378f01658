"""torchvision ResNets (random weights and BN statistics, eval mode) converted with `torch_to_variables`
vs our TSN / TSM logits; references: `aknet_jax.torch_reference` (torchvision + TSM's shift)."""

import jax
import numpy as np
import pytest

from aknet_jax import config as config_lib
from aknet_jax import models
from aknet_jax.checkpoints.torch_layout import torch_to_variables

torch = pytest.importorskip("torch")
# pylint: disable=g-import-not-at-top,wrong-import-position
from aknet_jax.torch_reference import TSN, torchvision  # noqa: E402,F401  (test_convert's)
from aknet_jax.torch_reference import make_tsm as _make_tsm, resnet as _resnet  # noqa: E402,F401

K = 7


def _config(backbone, depth, t):
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.dropout = backbone, depth, 0.5
  c.dataset.num_segments, c.dataset.num_classes = t, K
  return c


def _compare(model, state, config, frames):
  with torch.no_grad():
    want = model.eval()(frames).numpy()
  with jax.default_matmul_precision("highest"):
    variables = torch_to_variables(state, config)
    got = jax.jit(lambda v, x: models.build(config, "video_net").apply(v, x, train=False))(variables, frames)
  assert got.dtype == np.float32 and got.shape == want.shape
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  print(f"{config.model.backbone}-R{config.model.depth}: max |diff| / max |logit| = {err:.1e}")
  assert err < 1e-4, err


@pytest.mark.parametrize("depth", [18, 50])
def test_tsn_parity_torchvision_keys(depth):
  """Plain torchvision keys (`conv1.weight`, `layer1.0...`, `fc.*` dropped) + `new_fc.*`."""
  t, clips = 4, 2
  model = TSN(_resnet(depth, 0), t, K)
  state = {k: v for k, v in model.base_model.state_dict().items()}
  state["fc.weight"] = torch.zeros(1000, model.base_model.inplanes)
  state["fc.bias"] = torch.zeros(1000)
  state.update({f"new_fc.{k}": v for k, v in model.new_fc.state_dict().items()})
  frames = np.random.RandomState(depth).randn(clips, t, 64, 64, 3).astype(np.float32)
  _compare(model, state, _config("tsn", depth, t), frames)


@pytest.mark.parametrize("depth", [18, 50])
def test_tsm_parity_official_keys(depth):
  """Official TSM checkpoint form: `module.base_model.layerL.b.conv1.net.weight`, `module.new_fc.*`."""
  t, clips = 4, 2
  model = TSN(_make_tsm(_resnet(depth, 1), t), t, K)
  state = {f"module.{k}": v for k, v in model.state_dict().items()}
  assert "module.base_model.layer1.0.conv1.net.weight" in state
  frames = np.random.RandomState(depth + 1).randn(clips, t, 64, 64, 3).astype(np.float32)
  _compare(model, state, _config("tsm", depth, t), frames)


def test_tsm_resnet101_shifts_every_other_block():
  t = 3
  model = TSN(_make_tsm(_resnet(101, 2), t), t, K)
  state = {f"module.{k}": v for k, v in model.state_dict().items()}
  assert "module.base_model.layer3.1.conv1.weight" in state
  frames = np.random.RandomState(3).randn(1, t, 32, 32, 3).astype(np.float32)
  _compare(model, state, _config("tsm", 101, t), frames)


# --- Converter errors: one line naming the first bad key and the expected shape. ----------------


def _r18_state(t=2):
  model = TSN(_make_tsm(_resnet(18, 4), t), t, K)
  return {f"module.{k}": v for k, v in model.state_dict().items()}, _config("tsm", 18, t)


def test_converter_accepts_numpy_and_both_tsm_key_forms():
  state, config = _r18_state()
  from_torch = torch_to_variables(state, config)
  plain = {k.replace(".net.", "."): v.numpy() for k, v in state.items()}  # tune_from renames
  from_numpy = torch_to_variables(plain, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_torch, from_numpy)
  conv2 = state["module.base_model.layer2.0.conv2.weight"].numpy()
  np.testing.assert_array_equal(from_torch["params"]["backbone"]["layer2_0"]["conv2"]["kernel"],
                                conv2.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(from_torch["batch_stats"]["backbone"]["layer1_1"]["bn2"]["var"],
                                state["module.base_model.layer1.1.bn2.running_var"].numpy())
  np.testing.assert_array_equal(from_torch["params"]["new_fc"]["kernel"],
                                state["module.new_fc.weight"].numpy().T)


def test_converter_errors():
  state, config = _r18_state()
  missing = {k: v for k, v in state.items() if not k.endswith("layer2.0.downsample.1.running_var")}
  with pytest.raises(ValueError,
                     match=r"missing key 'layer2.0.downsample.1.running_var' \(shape \(128,\)\)"):
    torch_to_variables(missing, config)
  with pytest.raises(ValueError, match="unexpected key 'module.base_model.layer5.0.conv1.weight'"):
    torch_to_variables({**state, "module.base_model.layer5.0.conv1.weight": np.zeros(1)}, config)
  wrong_k = {**state, "module.new_fc.weight": np.zeros((K + 1, 512), np.float32)}
  with pytest.raises(ValueError,
                     match=r"'module.new_fc.weight' has shape \(8, 512\), expected \(7, 512\)"):
    torch_to_variables(wrong_k, config)
  conv1 = state["module.base_model.layer1.0.conv1.net.weight"]
  both = {**state, "module.base_model.layer1.0.conv1.weight": conv1}
  with pytest.raises(ValueError, match="both map to 'layer1.0.conv1.weight'"):
    torch_to_variables(both, config)
  config.model.depth = 50
  with pytest.raises(ValueError, match=r"'module.base_model.layer1.0.conv1.net.weight' has shape "
                                       r"\(64, 64, 3, 3\), expected \(64, 64, 1, 1\)"):
    torch_to_variables(state, config)


def test_converter_imagenet_checkpoint_takes_new_fc_from_init():
  state, config = _r18_state()
  imagenet = {k[len("module.base_model."):]: v for k, v in state.items() if "new_fc" not in k}
  imagenet = {k.replace(".net.", "."): v for k, v in imagenet.items()}
  imagenet.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
  with pytest.raises(ValueError, match="missing key 'new_fc.bias'"):
    torch_to_variables(imagenet, config)
  frames = np.zeros((1, 2, 32, 32, 3), np.float32)
  key = jax.random.key(0, impl="rbg")  # Compiles faster than threefry on CPU.
  init = jax.jit(lambda: models.build(config, "video_net").init(key, frames, train=False))()
  variables = torch_to_variables(imagenet, config, init_variables=init)
  np.testing.assert_array_equal(variables["params"]["new_fc"]["kernel"],
                                init["params"]["new_fc"]["kernel"])
  np.testing.assert_array_equal(variables["params"]["backbone"]["conv1"]["kernel"],
                                imagenet["conv1.weight"].numpy().transpose(2, 3, 1, 0))

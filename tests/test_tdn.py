"""TDN pieces (reference doc section 3) against NumPy references written here from the doc and the
torch reference in `aknet_jax.torch_reference`.

Those torch modules are written from the doc's description (not from TDN's code) and use torch's
own conv, pooling, padding and `F.interpolate`; they share the doc, not the implementation, with ours.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import config as config_lib
from aknet_jax import models
from aknet_jax.checkpoints.torch_layout import torch_to_variables
from aknet_jax.models import tdn
from aknet_jax.models.temporal_shift import temporal_shift


def test_nearest_indices_pytorch_rule():
  np.testing.assert_array_equal(tdn.nearest_indices(3, 7), [0, 0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(tdn.nearest_indices(28, 56), np.arange(56) // 2)
  # jax.image.resize's half-pixel rule differs at 3 -> 7; ours must not follow it.
  x = jnp.arange(3.0).reshape(1, 3, 1, 1)
  half_pixel = jax.image.resize(x, (1, 7, 1, 1), "nearest")[0, :, 0, 0]
  assert not np.array_equal(np.asarray(half_pixel), [0, 0, 0, 1, 1, 2, 2])


def test_nearest_resize_matches_torch_interpolate():
  torch = pytest.importorskip("torch")
  rng = np.random.RandomState(0)
  for (h, w), (oh, ow) in [((3, 3), (7, 7)), ((4, 5), (9, 7)), ((7, 6), (3, 14)), ((14, 14), (28, 28))]:
    x = rng.randn(2, h, w, 3).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), (oh, ow))
    got = tdn.nearest_resize(jnp.asarray(x), oh, ow)
    np.testing.assert_array_equal(np.asarray(got), ref.permute(0, 2, 3, 1).numpy())


def test_integer_upscale_is_a_broadcast_with_the_gathers_gradient():
  """2x upscales (TDN's fusion of the difference branch, mSE at even sizes) repeat rows instead of
  gathering them: same values and gradient as the source-index gather, no gather or scatter."""
  x = jnp.asarray(np.random.RandomState(2).randn(2, 14, 14, 3).astype(np.float32))
  g = jnp.asarray(np.random.RandomState(3).randn(2, 28, 28, 3).astype(np.float32))
  idx = tdn.nearest_indices(14, 28)
  gather = lambda x: jnp.take(jnp.take(x, idx, axis=1), idx, axis=2)
  resize = lambda x: tdn.nearest_resize(x, 28, 28)
  np.testing.assert_array_equal(resize(x), gather(x))
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_allclose(grad(resize), grad(gather), rtol=1e-6, atol=1e-6)
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(resize(x) * g))).lower(x).as_text()
  assert "gather" not in hlo and "scatter" not in hlo


def test_rgb_differences_order_and_fusion_weights():
  f = np.random.RandomState(1).randn(2, 5, 4, 4, 3).astype(np.float32)
  want = np.concatenate([f[:, 1] - f[:, 0], f[:, 2] - f[:, 1], f[:, 3] - f[:, 2], f[:, 4] - f[:, 3]],
                        -1)
  np.testing.assert_array_equal(np.asarray(tdn.rgb_differences(jnp.asarray(f))), want)
  assert tdn.fusion_weights(8) == (0.5, 0.5)
  assert tdn.fusion_weights(4) == tdn.fusion_weights(16) == (0.75, 0.25)


def test_shift_module_at_init_equals_tsm_shift():
  x = jax.random.normal(jax.random.key(0), (3 * 4, 5, 5, 24))  # 3 clips x 4 frames, fold 3
  module = tdn.ShiftModule(num_segments=4, shift_div=8)
  variables = module.init(jax.random.key(1), x)
  np.testing.assert_array_equal(np.asarray(module.apply(variables, x)),
                                np.asarray(temporal_shift(x, 4, 8)))


# ---------------------------------------------------------------------------------------------
# Torch references: `aknet_jax.torch_reference` (TDNNet, MSE, TDNShift), written from the doc.


def _torch_reference():
  """The library's torch reference module (skips without the torch extra)."""
  pytest.importorskip("torch")
  from aknet_jax import torch_reference  # pylint: disable=g-import-not-at-top (torch extra)
  return torch_reference


def _nchw(x):
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _conv(w):  # OIHW -> HWIO
  return jnp.asarray(w.detach().numpy().transpose(2, 3, 1, 0))


def _bn(m):
  return ({"scale": jnp.asarray(m.weight.detach().numpy()),
           "bias": jnp.asarray(m.bias.detach().numpy())},
          {"mean": jnp.asarray(m.running_mean.numpy()), "var": jnp.asarray(m.running_var.numpy())})


def _mse_variables(ref):
  params, stats = {}, {}
  for name in ("conv1", "conv2", "conv3", "conv3_smallscale2", "conv3_smallscale4"):
    params[name] = {"kernel": _conv(getattr(ref, name).weight)}
  for name in ("bn1", "bn3", "bn3_smallscale2", "bn3_smallscale4"):
    params[name], stats[name] = _bn(getattr(ref, name))
  return {"params": params, "batch_stats": stats}


def _flax_mse(t, train):
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           use_fast_variance=False)
  return tdn.MSE(t, conv, norm)


@pytest.mark.parametrize("size", [7, 8])
def test_mse_matches_torch_reference(size):
  """Eval and train mode; at 7x7 the half-scale map is 3x3 and comes back with [0,0,0,1,1,2,2]."""
  lib = _torch_reference()
  torch = lib.torch
  t, c = 4, 32
  torch.manual_seed(0)
  ref = lib.randomize_tdn(lib.MSE(c, t), 1).eval()
  x = np.random.RandomState(2).randn(2 * t, size, size, c).astype(np.float32)
  variables = _mse_variables(ref)
  with jax.default_matmul_precision("highest"):
    got = _flax_mse(t, False).apply(variables, jnp.asarray(x))
    got_train, updated = _flax_mse(t, True).apply(variables, jnp.asarray(x), mutable=["batch_stats"])
  with torch.no_grad():
    want = ref(torch.from_numpy(_nchw(x))).permute(0, 2, 3, 1).numpy()
    ref.train()
    want_train = ref(torch.from_numpy(_nchw(x))).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-5)
  # Shared BNs run twice: two momentum updates of the running mean, forward difference first.
  for name in ("bn3", "bn3_smallscale2", "bn3_smallscale4", "bn1"):
    np.testing.assert_allclose(np.asarray(updated["batch_stats"][name]["mean"]),
                               getattr(ref, name).running_mean.numpy(), rtol=1e-4, atol=1e-6)


def test_shift_module_matches_torch_conv1d():
  lib = _torch_reference()
  torch = lib.torch
  t, c = 4, 16
  torch.manual_seed(0)
  ref = lib.randomize_tdn(lib.TDNShift(c, t), 3)
  x = np.random.RandomState(4).randn(2 * t, 3, 5, c).astype(np.float32)
  kernel = jnp.asarray(ref.conv.weight.detach().numpy().transpose(2, 1, 0))  # (C, 1, 3) -> (3, 1, C)
  got = tdn.ShiftModule(t, 8).apply({"params": {"kernel": kernel}}, jnp.asarray(x))
  with torch.no_grad():
    want = ref(torch.from_numpy(_nchw(x))).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def _tdn_config(t, width=8, num_classes=5):
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.width, c.model.dropout = "tdn", 50, width, 0.0
  c.dataset.num_segments, c.dataset.frames_per_segment, c.dataset.num_classes = t, 5, num_classes
  return c


@pytest.mark.parametrize("size", [64, 56, 33])
def test_tdn_model_parity_with_converted_torch_reference(size):
  """Whole TDN-R50 (width 8): difference stem, both fusions, mSE + shift in every block of
  layers 2-4, converted from official-style keys (module.base_model.*_bak, conv1_5.0, conv1_temp).
  T = 3 uses the asymmetric fusion weights 0.75 / 0.25, so swapped weights would show.
  56 px (the official code's small setting) and 33 px (the smallest it runs: res5 maps 2x2, whose
  2x2 avg-pool in mSE leaves 1x1) take odd sizes: floor-mode pools, non-integer nearest resizes."""
  lib = _torch_reference()
  torch = lib.torch
  t, clips, k, width = 3, 2, 5, 8
  torch.manual_seed(0)
  ref = lib.randomize_tdn(lib.TDNNet(width, t), 5).eval()
  fc = torch.nn.Linear(32 * width, k)
  state = {f"module.base_model.{n}": v for n, v in ref.state_dict().items()}
  state.update({f"module.new_fc.{n}": v for n, v in fc.state_dict().items()})
  config = _tdn_config(t, width, k)
  variables = torch_to_variables(state, config)

  frames = np.random.RandomState(6).randn(clips, t * 5, size, size, 3).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = jax.jit(lambda v, x: models.build(config, "video_net").apply(v, x, train=False))(variables, frames)
  with torch.no_grad():
    x = frames.reshape(clips * t, 5, size, size, 3).transpose(0, 1, 4, 2, 3)
    feats = ref(torch.from_numpy(np.ascontiguousarray(x.reshape(clips * t, 15, size, size))))
    want = fc(feats).view(clips, t, k).mean(1).numpy()
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  print(f"tdn-R50 width {width}: max |diff| / max |logit| = {err:.1e}")
  assert err < 1e-4, err


def test_tdn_below_33_px_is_one_line_error():
  """At 32 px res5's map is 1x1 and mSE's 2x2 avg-pool would leave nothing (torch fails there too)."""
  config = _tdn_config(2)
  frames = jnp.zeros((1, 2 * 5, 32, 32, 3))
  with pytest.raises(ValueError, match=r"image 32x32 is too small for backbone 'tdn' up to res5; "
                                       r"config.dataset.image_size must be >= 33") as info:
    models.build(config, "backbone").init(jax.random.key(0), frames, train=False)
  assert "\n" not in str(info.value)
  # Up to res4 the deepest mSE map is ceil(side / 16): 17 px is the smallest.
  assert [models.backbone.min_image_size("tdn", s) for s in ("res2", "res3", "res4", "res5")] == [
      4, 9, 17, 33]

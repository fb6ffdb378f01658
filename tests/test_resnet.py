"""ResNet tables, backbone shapes / stages / partial BN / init, and the backbone's input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import config as config_lib
from aknet_jax.models import batch_norm
from aknet_jax.models import resnet
from aknet_jax.models import winograd
from aknet_jax import models


def _config(backbone="tsm", depth=50, width=8, t=2, **model):
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.width = backbone, depth, width
  c.model.update(model)
  c.dataset.num_segments = t
  c.dataset.frames_per_segment = 5 if backbone == "tdn" else 1
  return c


def _frames(c, size=64, clips=1, seed=0):
  shape = (clips, c.dataset.num_segments * c.dataset.frames_per_segment, size, size, 3)
  return jax.random.normal(jax.random.key(seed), shape)


def test_stage_tables():
  assert resnet.STAGES == ("res2", "res3", "res4", "res5")
  assert resnet.stage_channels(50, 64) == {
      "res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
  assert resnet.stage_channels(18, 64) == {
      "res2": 64, "res3": 128, "res4": 256, "res5": 512}
  assert resnet.stage_channels(101, 16)["res4"] == 256
  assert resnet.stage_strides() == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.mark.parametrize("backbone", ["tsn", "tsm", "tdn"])
@pytest.mark.parametrize("upto", ["res2", "res4", "res5"])
def test_feature_shapes_and_only_stages_up_to_upto(backbone, upto):
  c = _config(backbone, t=3)
  frames = jax.ShapeDtypeStruct((2, 3 * c.dataset.frames_per_segment, 96, 64, 3), jnp.float32)
  model = models.build(c, "backbone")
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False, upto=upto), frames)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, upto=upto), variables, frames)
  stride = resnet.stage_strides()[upto]
  assert out.shape == (6, 96 // stride, 64 // stride, resnet.stage_channels(c.model.depth, c.model.width)[upto])
  last = resnet.STAGES.index(upto) + 1
  names = set(variables["params"])
  assert f"layer{last}_0" in names and f"layer{last + 1}_0" not in names
  is_tdn = backbone == "tdn"
  assert ("conv1_5" in names) == is_tdn and ("resnext_layer1_2" in names) == is_tdn
  block = variables["params"]["layer2_0"] if last >= 2 else variables["params"]["layer1_0"]
  assert ("mse" in block) == ("shift" in block) == (backbone == "tdn" and last >= 2)
  assert ("bias" in variables["params"]["conv1"]) == (backbone == "tdn")


def test_is_frozen_bn_path():
  frozen = resnet.is_frozen_bn_path
  assert not frozen(("params", "backbone", "bn1", "scale"))
  assert not frozen(("backbone", "conv1", "kernel"))
  assert frozen(("params", "backbone", "layer1_0", "bn1", "scale"))
  assert frozen(("backbone", "layer3_5", "downsample_bn", "bias"))
  assert frozen(("backbone", "layer2_1", "mse", "bn3_smallscale2", "scale"))
  assert frozen(("backbone", "resnext_layer1_2", "bn3", "bias"))
  assert frozen(("backbone", "bn1_5", "scale"))
  assert not frozen(("backbone", "layer2_1", "conv2", "kernel"))
  assert not frozen(("backbone", "layer2_1", "shift", "kernel"))
  assert not frozen(("new_fc", "bias"))
  tree = {"backbone": {"layer1_0": {"bn2": {"scale": 1}}}}
  path = jax.tree_util.tree_flatten_with_path(tree)[0][0][0]
  assert frozen(path)


def _random_variables(model, frames, upto="res5", seed=0):
  """Random params / BN statistics of the right shapes (no jitted init: threefry compiles slowly)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False, upto=upto), frames)
  rng = np.random.RandomState(seed)

  def fill(path, s):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
    std = np.sqrt(2 / np.prod(s.shape[:-1])) if name == "kernel" else 0.1
    return jnp.asarray(rng.randn(*s.shape) * std, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("backbone,depth,partial_bn", [("tsn", 18, False), ("tdn", 50, True)])
def test_bn_momentum_and_partial_bn(backbone, depth, partial_bn):
  """Running stats move by (1 - 0.9) * batch stats; partial BN leaves all but the stem's alone.
  TDN runs up to res3, which has all its kinds of BN (bn1_5, resnext_layer1, mSE)."""
  c = _config(backbone, depth, t=2, partial_bn=partial_bn)
  frames = _frames(c, clips=2)
  model = models.build(c, "backbone")
  upto = "res3" if backbone == "tdn" else "res5"
  before = _random_variables(model, frames, upto)
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=True, upto=upto, mutable=["batch_stats"],
                                              capture_intermediates=True))(before, frames)
  before, after = before["batch_stats"], state["batch_stats"]
  conv1 = np.asarray(state["intermediates"]["conv1"]["__call__"][0], np.float64)
  for stat, batch in (("mean", conv1.mean((0, 1, 2))), ("var", conv1.var((0, 1, 2)))):
    np.testing.assert_allclose(after["bn1"][stat], 0.9 * before["bn1"][stat] + 0.1 * batch,
                               rtol=1e-4, atol=1e-5)
  leaves = jax.tree_util.tree_flatten_with_path(jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(a, b)), before, after))[0]
  assert len(leaves) >= 40
  for path, unchanged in leaves:
    names = tuple(p.key for p in path)
    assert unchanged == (partial_bn and resnet.is_frozen_bn_path(names)), names


def test_init_distributions():
  """He init N(0, sqrt(2 / (kh kw C_out))) (not truncated); TDN conv bias U(+-1/sqrt(fan_in))."""
  c = _config("tdn", width=64, t=2)
  frames = jnp.zeros((1, 10, 64, 64, 3))
  key = jax.random.key(1, impl="rbg")  # Compiles faster than threefry on CPU.
  params = jax.jit(lambda x: models.build(c, "backbone").init(key, x, train=False, upto="res2"))(
      frames)["params"]
  kernel = np.asarray(params["layer1_1"]["conv2"]["kernel"])  # 3x3, 64 -> 64
  assert abs(kernel.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.02
  assert np.abs(kernel).max() > 3.5 * kernel.std()  # Not truncated at 2 sigma.
  bias = np.asarray(params["layer1_1"]["conv1"]["bias"])  # 1x1 from 256 channels
  bound = 1 / np.sqrt(256)
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.9 * bound
  assert not np.any(np.asarray(params["layer1_1"]["bn1"]["bias"]))
  np.testing.assert_array_equal(params["layer1_1"]["bn1"]["scale"], 1.0)
  assert "bias" not in params["conv1_5"]


@pytest.mark.parametrize("change,shape,match", [
    (dict(backbone="i3d"), None, r"config.model.backbone: 'i3d' is not one of \('tsn', 'tsm', 'tdn', 'tea', 'tada2d'\)"),
    (dict(depth=42), None, r"config.model.depth: 42 is not one of \(18, 34, 50, 101\)"),
    (dict(backbone="tdn", depth=18), None, "config.model.depth: 18, but backbone 'tdn' needs"),
    (dict(upto="res6"), None, "upto: 'res6' is not one of"),
    (dict(frames_per_segment=5), None,
     "config.dataset.frames_per_segment: 5, but backbone 'tsm' takes 1"),
    ({}, (1, 3, 64, 64, 3), r"frames: axis 1 has 3 frames, expected .* = 2 \* 1"),
    ({}, (1, 2, 64, 64), r"frames: shape \(1, 2, 64, 64\) is not \(B, T\*L, H, W, 3\)"),
    ({}, (1, 2, 64, 16, 3),
     "frames: image 64x16 is too small .* config.dataset.image_size must be >= 32"),
    (dict(backbone="tdn", frames_per_segment=5), (1, 10, 32, 32, 3),
     "frames: image 32x32 is too small for backbone 'tdn' up to res5; .* >= 33"),
])
def test_bad_input_raises_one_line_value_error(change, shape, match):
  c = _config()
  upto = change.pop("upto", "res5")
  for key in ("backbone", "depth"):
    if key in change:
      c.model[key] = change[key]
  if "frames_per_segment" in change:
    c.dataset.frames_per_segment = change["frames_per_segment"]
  frames = jnp.zeros(shape or (1, 2, 64, 64, 3))
  with pytest.raises(ValueError, match=match) as info:  # Raised before any computation.
    models.build(c, "backbone").init(jax.random.key(0), frames, train=False, upto=upto)
  assert "\n" not in str(info.value)


class _End(nn.Module):
  """A block's end, `resnet.residual_end`, with or without a shortcut BN."""
  train: bool
  shortcut_bn: bool

  @nn.compact
  def __call__(self, h, x):
    norm = batch_norm.norm_layer(train=self.train, momentum=0.9, axis_name=None,
                                 dtype=jnp.float32)
    return resnet.residual_end(h, norm(name="bn3"), x,
                               norm(name="downsample_bn") if self.shortcut_bn else None)


def _inline_end(v, h, x, shortcut_bn):
  """The same with flax's own BatchNorm, called inline: relu(bn(h) + bn'(x))."""
  bn = lambda name, z: nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(  # noqa: E731
      {"params": v["params"][name], "batch_stats": v["batch_stats"][name]}, z)
  return nn.relu(bn("bn3", h) + (bn("downsample_bn", x) if shortcut_bn else x))


@pytest.mark.parametrize("shortcut_bn", [False, True])
def test_block_end_at_inference_is_one_unfused_pass_with_the_inline_values(shortcut_bn):
  """At inference the BNs, the residual sum and the ReLU of a block's end run in one conditional
  on CPU (so the next block reads a buffer, not a recomputed chain): values and input gradients
  equal the inline expression with flax's BatchNorm; training keeps the inline form."""
  h, x = (jax.random.normal(jax.random.key(i), (2, 3, 4, 6)) for i in (1, 2))
  end = _End(train=False, shortcut_bn=shortcut_bn)
  v = end.init(jax.random.key(0), h, x)
  v = jax.tree.map(lambda a: jnp.abs(a + 0.3 * jax.random.normal(jax.random.key(3), a.shape)), v)
  np.testing.assert_allclose(end.apply(v, h, x), _inline_end(v, h, x, shortcut_bn),
                             rtol=1e-6, atol=1e-6)
  g = jax.random.normal(jax.random.key(4), h.shape)
  grads = [jax.grad(lambda h, x: jnp.sum(f(h, x) * g), argnums=(0, 1))(h, x)
           for f in (lambda h, x: end.apply(v, h, x), lambda h, x: _inline_end(v, h, x, shortcut_bn))]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert " conditional(" in jax.jit(end.apply).lower(v, h, x).compile().as_text()
  train = _End(train=True, shortcut_bn=shortcut_bn)
  program = jax.jit(lambda v, h, x: train.apply(v, h, x, mutable=["batch_stats"]))
  assert " conditional(" not in program.lower(v, h, x).compile().as_text()
  # Off a CPU host (and in an export for several platforms) the inline form, as before.
  with winograd.lowering_for(("cpu", "cuda")):
    assert "cond" not in str(jax.make_jaxpr(lambda h, x: end.apply(v, h, x))(h, x))

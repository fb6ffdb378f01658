"""VideoNet: parameter counts, outputs, consensus, dropout, gradients, bf16 and pmap (subprocess)."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aknet_jax import config as config_lib
from aknet_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(backbone="tsm", depth=50, width=8, t=2, k=5, **model):
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.width = backbone, depth, width
  c.model.update(model)
  c.dataset.num_segments, c.dataset.num_classes = t, k
  c.dataset.frames_per_segment = 5 if backbone == "tdn" else 1
  return c


def _frames(c, size=64, clips=2, seed=0):
  shape = (clips, c.dataset.num_segments * c.dataset.frames_per_segment, size, size, 3)
  return jax.random.normal(jax.random.key(seed), shape)


def _shapes(c, size=64):
  frames = jax.ShapeDtypeStruct(_frames(c, size, 1).shape, jnp.float32)
  return jax.eval_shape(lambda x: models.build(c, "video_net").init(jax.random.key(0), x, train=False), frames)


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _random_variables(c, model=None, upto="res5", seed=0):
  """Random params / BN statistics of the right shapes (a jitted init compiles slowly on CPU)."""
  rng = np.random.RandomState(seed)
  if model is None:
    shapes = _shapes(c)
  else:
    frames = jax.ShapeDtypeStruct(_frames(c, 64, 1).shape, jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False, upto=upto), frames)

  def fill(path, s):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
    std = np.sqrt(2 / np.prod(s.shape[:-1])) if name == "kernel" else 0.1
    return jnp.asarray(rng.randn(*s.shape) * std, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_parameter_counts():
  """Reference doc 1.5 / appendix A (K = 174): TSM-R50 23,864,558; TDN-R50 24,410,574 without the
  unused conv1_temp; mSE + shift per block 3,960 / 14,320 / 54,240 in layers 2 / 3 / 4."""
  counts = {}
  for backbone, depth in [("tsn", 50), ("tsm", 50), ("tdn", 50), ("tsm", 18)]:
    c = _config(backbone, depth, width=64, t=8, k=174)
    params = _shapes(c, 224)["params"]
    counts[backbone, depth] = _count(params)
    if backbone == "tdn":
      blocks = params["backbone"]
      for block, want in [("layer2_1", 3960), ("layer3_0", 14320), ("layer4_2", 54240)]:
        assert _count(blocks[block]["mse"]) + _count(blocks[block]["shift"]) == want
  assert counts["tsm", 50] == counts["tsn", 50] == 23_864_558
  assert counts["tdn", 50] == 24_410_574
  assert counts["tsm", 18] == 11_176_512 + 512 * 174 + 174  # torchvision R18 without fc + new_fc


def test_outputs_consensus_and_dropout():
  """Eval: (B, K) float32 = mean over T of per-frame logits; train: {'logits'}, dropout from rngs."""
  c = _config("tsn", 18, t=3, dropout=0.5)
  variables = _random_variables(c)
  frames = _frames(c, size=32)
  net = models.build(c, "video_net")
  logits = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, frames)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  # TSN frames are independent in eval mode: one-frame clips give the per-frame logits.
  c1 = _config("tsn", 18, t=1)
  per_frame = models.build(c1, "video_net").apply(variables, frames.reshape((6, 1) + frames.shape[2:]), train=False)
  np.testing.assert_allclose(logits, per_frame.reshape(2, 3, 5).mean(1), rtol=1e-5, atol=1e-5)

  train = jax.jit(lambda v, x, r: net.apply(v, x, train=True, rngs={"dropout": r},
                                            mutable=["batch_stats"]))
  out, state = train(variables, frames, jax.random.key(1))
  again, _ = train(variables, frames, jax.random.key(1))
  other, _ = train(variables, frames, jax.random.key(2))
  assert set(out) == {"logits"} and out["logits"].shape == (2, 5)
  assert set(state) == {"batch_stats"}
  np.testing.assert_array_equal(out["logits"], again["logits"])
  assert not np.allclose(out["logits"], other["logits"])


def test_new_fc_init():
  c = _config("tsn", 18, width=64, t=1, k=174)
  key = jax.random.key(3, impl="rbg")  # Compiles faster than threefry on CPU.
  params = jax.jit(lambda x: models.build(c, "video_net").init(key, x, train=False))(
      jnp.zeros((1, 1, 32, 32, 3)))["params"]
  kernel = np.asarray(params["new_fc"]["kernel"])
  assert kernel.shape == (512, 174) and abs(kernel.std() / 0.001 - 1) < 0.03
  assert abs(kernel.mean()) < 1e-4 and not np.any(np.asarray(params["new_fc"]["bias"]))


@pytest.mark.parametrize("backbone,depth", [("tsm", 18), ("tdn", 50)])
def test_gradients_reach_every_parameter(backbone, depth):
  """TSM: the whole VideoNet; TDN: up to res3, which has every kind of TDN module (faster compile)."""
  c = _config(backbone, depth, t=2, dropout=0.2)
  frames, labels = _frames(c), jnp.array([1, 3])
  if backbone == "tdn":
    model = models.build(c, "backbone")
    variables = _random_variables(c, model, upto="res3")
    apply = lambda v: model.apply(v, frames, train=True, upto="res3", mutable=["batch_stats"])
    loss_of = lambda out: jnp.mean(jnp.sin(out.astype(jnp.float32)))
  else:
    variables = _random_variables(c)
    apply = lambda v: models.build(c, "video_net").apply(v, frames, train=True, rngs={"dropout": jax.random.key(0)},
                                        mutable=["batch_stats"])
    loss_of = lambda out: optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()

  def loss(params):
    return loss_of(apply({"params": params, "batch_stats": variables["batch_stats"]})[0])

  grads = jax.jit(jax.grad(loss))(variables["params"])
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert any("shift" in jax.tree_util.keystr(p) for p, _ in leaves) == (backbone == "tdn")
  scale = max(float(np.max(np.abs(g))) for _, g in leaves)
  for path, g in leaves:
    g, name = np.asarray(g), jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), name
    if "smallscale" in name and name.endswith("['bias']"):
      # mSE's small-scale BN biases add a per-channel constant that conv3 (1x1) maps to a
      # per-channel constant, which bn3's mean subtraction removes: their gradient is 0.
      assert np.max(np.abs(g)) <= 1e-5 * scale, name
    else:
      assert np.any(g != 0), name


@pytest.mark.parametrize("backbone,depth", [("tsm", 18), ("tdn", 50)])
def test_bf16_keeps_fp32_params(backbone, depth):
  """bf16 compute, fp32 params; TDN checked up to res3 (all its module kinds, faster to compile)."""
  c, c16 = _config(backbone, depth, t=2, dropout=0.0), _config(backbone, depth, t=2, dropout=0.0)
  c16.half_precision = True
  frames = _frames(c)
  if backbone == "tdn":
    model, model16 = models.build(c, "backbone"), models.build(c16, "backbone")
    variables = _random_variables(c, model, upto="res3")
    kw = dict(upto="res3")
  else:
    model, model16 = models.build(c, "video_net"), models.build(c16, "video_net")
    variables, kw = _random_variables(c), {}
  shapes16 = jax.eval_shape(lambda x: model16.init(jax.random.key(0), x, train=False, **kw), frames)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes16))
  run = lambda m, cap: jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"],
                                                   capture_intermediates=cap, **kw))
  want, _ = run(model, False)(variables, frames)
  got, state = run(model16, True)(variables, frames)
  if backbone == "tdn":
    assert got.dtype == jnp.bfloat16
  else:
    assert got["logits"].dtype == jnp.float32
    assert state["intermediates"]["backbone"]["__call__"][0].dtype == jnp.bfloat16
    got, want = got["logits"], want["logits"]
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state["batch_stats"]))
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err < 0.1, err


_PMAP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from aknet_jax import config as config_lib
    from aknet_jax import models
    import sys
    assert jax.local_device_count() == 2, jax.devices()
    backbone = sys.argv[1]
    c = config_lib.base_config()
    c.model.backbone, c.model.width, c.model.dropout = backbone, 8, 0.0
    c.model.depth = 50 if backbone == "tdn" else 18  # TDN's mSE lives in bottleneck blocks.
    if backbone == "tdn":  # One bottleneck block per stage: every TDN module, compiled faster.
      from aknet_jax.models import resnet
      resnet.STAGE_SIZES[50] = (1, 1, 1, 1)
    c.dataset.num_segments, c.dataset.num_classes = 3, 5
    c.dataset.frames_per_segment = L = 5 if backbone == "tdn" else 1
    S = 64 if backbone == "tdn" else 32  # TDN's stem downsamples 4x more before res2.
    frames = jax.random.normal(jax.random.key(0), (4, 3 * L, S, S, 3))
    key = jax.random.key(1, impl="rbg")  # Compiles faster than threefry on CPU.
    variables = jax.jit(lambda x: models.build(c, "video_net").init(key, x, train=False))(frames)

    def step(v, x, axis_name):
      def loss(p):
        out, state = models.build(c, "video_net", bn_axis_name=axis_name).apply(
            {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(out["logits"] ** 2), (out["logits"], state["batch_stats"])
      grads, (logits, stats) = jax.grad(loss, has_aux=True)(v["params"])
      if axis_name:
        grads = jax.lax.pmean(grads, axis_name)
      return logits, stats, grads

    one_device = jax.jit(lambda v, x: step(v, x, None))
    single = one_device(variables, frames)
    rep = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), variables)
    p_step = jax.pmap(lambda v, x: step(v, x, "batch"), axis_name="batch")
    multi = p_step(rep, frames.reshape(2, 2, 3 * L, S, S, 3))
    # Cross-replica BN: the 2 devices x 2 clips normalise with the global batch statistics.
    np.testing.assert_allclose(np.asarray(multi[0]).reshape(4, 5), single[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(multi[1]), jax.tree_util.tree_leaves(single[1])):
      np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)
      np.testing.assert_array_equal(a[0], a[1])
    # pmean of per-device grads of a per-device mean = grad of the global mean (equal halves),
    # up to float32 rounding. Deep BN stacks (TDN-50) make some gradients ill-conditioned, so the
    # yardstick is the same single-device step on the clips in another order (exact in reals).
    reordered = one_device(variables, frames[jnp.array([2, 3, 0, 1])])
    scale = 1e-2 * max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(single[2]))
    def worst(grads, strip):
      return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
          lambda a, b: float(np.max(np.abs(strip(a) - b)) / max(np.max(np.abs(b)), scale)),
          grads, single[2])))
    pmapped, rounding = worst(multi[2], lambda a: a[0]), worst(reordered[2], lambda a: a)
    print("worst leaf difference: pmap", pmapped, "reordered batch", rounding)
    assert pmapped <= 3 * rounding + 1e-5, (pmapped, rounding)
    print("PMAP_OK")
""")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tsm", "tdn"])
def test_pmap_with_cross_replica_batch_norm(backbone):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", _PMAP_SCRIPT, backbone], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "PMAP_OK" in result.stdout, result.stderr[-3000:]

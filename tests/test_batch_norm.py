"""Our BatchNorm against torch.nn.BatchNorm{1,2}d: outputs and running statistics, step by step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aknet_jax.models.batch_norm import BatchNorm


def _torch_layout(x):
  """(B, ..., C) -> torch's (B, C, ...)."""
  return torch.from_numpy(np.moveaxis(x, -1, 1).copy())


@pytest.mark.parametrize("shape,torch_bn", [
    ((4, 5, 6, 3), torch.nn.BatchNorm2d),  # Conv maps (clips, H, W, C).
    ((8, 16), torch.nn.BatchNorm1d),        # The transform net's fc layers: 8 clips.
    ((2, 7, 16), torch.nn.BatchNorm1d),     # Point features (clips, points, C).
])
def test_training_steps_and_running_statistics_match_torch(shape, torch_bn):
  rng = np.random.RandomState(0)
  ours = BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)
  ref = torch_bn(shape[-1], momentum=0.1, eps=1e-5)
  variables = ours.init(jax.random.PRNGKey(0), jnp.zeros(shape), use_running_average=False)
  for step in range(3):
    x = (rng.randn(*shape) * (step + 1) + step).astype(np.float32)
    y, updates = ours.apply(variables, jnp.asarray(x), use_running_average=False,
                            mutable=["batch_stats"])
    variables = {"params": variables["params"], **updates}
    want = ref(_torch_layout(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(y), np.moveaxis(want, 1, -1), rtol=1e-5, atol=1e-5)
    stats = variables["batch_stats"]
    np.testing.assert_allclose(stats["mean"], ref.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["var"], ref.running_var.numpy(), rtol=1e-6, atol=1e-7)
  ref.eval()
  x = rng.randn(*shape).astype(np.float32)
  y = ours.apply(variables, jnp.asarray(x), use_running_average=True)
  want = ref(_torch_layout(x)).detach().numpy()
  np.testing.assert_allclose(np.asarray(y), np.moveaxis(want, 1, -1), rtol=1e-5, atol=1e-5)


def test_flax_batch_norm_would_store_the_biased_variance():
  """The difference this module exists for: n = 8 clips -> Flax's running variance is 7/8 of
  the unbiased one in the (1 - momentum) share of the update."""
  x = jnp.asarray(np.random.RandomState(1).randn(8, 4).astype(np.float32))
  kw = dict(use_running_average=False, momentum=0.0, epsilon=1e-5, use_fast_variance=False)
  flax_bn, ours = nn.BatchNorm(**kw), BatchNorm(**kw)
  v = flax_bn.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(
      ours.init(jax.random.PRNGKey(0), x))  # Same variables: checkpoints are interchangeable.
  _, a = flax_bn.apply(v, x, mutable=["batch_stats"])
  _, b = ours.apply(v, x, mutable=["batch_stats"])
  np.testing.assert_allclose(b["batch_stats"]["var"], np.var(np.asarray(x), axis=0, ddof=1),
                             rtol=1e-5)
  np.testing.assert_allclose(a["batch_stats"]["var"] * 8 / 7, b["batch_stats"]["var"], rtol=1e-5)


def test_init_and_eval_leave_the_running_statistics_alone():
  x = jnp.asarray(np.random.RandomState(2).randn(4, 3).astype(np.float32))
  bn = BatchNorm(momentum=0.9, epsilon=1e-5)
  v = bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
  np.testing.assert_array_equal(v["batch_stats"]["var"], np.ones(3))
  np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(3))
  _, updates = bn.apply(v, x, use_running_average=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(updates["batch_stats"]["var"], np.ones(3))


def test_a_single_value_per_channel_keeps_the_running_variance_finite():
  """One clip on one device (PyTorch refuses it): no 0 / 0, the running variance only decays."""
  bn = BatchNorm(momentum=0.9, epsilon=1e-5)
  x = jnp.ones((1, 4))
  v = bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
  _, updates = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(updates["batch_stats"]["var"], np.full(4, 0.9), rtol=1e-6)


def _sum_sin_loss(bn, variables, x, w):
  y, _ = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  return jnp.sum(jnp.sin(y) * w)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (2, 7, 16)])
def test_training_gradients_match_torch(shape):
  """The closed-form backward (one pass, two reductions) against torch autograd."""
  rng = np.random.RandomState(3)
  x = (rng.randn(*shape) * 2 + 1).astype(np.float32)
  w = rng.randn(*shape).astype(np.float32)
  c = shape[-1]
  scale, bias = (np.arange(c) * 0.1 + 0.5).astype(np.float32), np.linspace(-1, 1, c, dtype=np.float32)
  bn = BatchNorm(momentum=0.9, epsilon=1e-5)
  v = bn.init(jax.random.PRNGKey(0), jnp.zeros(shape), use_running_average=False)
  v = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
       "batch_stats": v["batch_stats"]}
  gv, gx = jax.grad(lambda v, x: _sum_sin_loss(bn, v, x, w), argnums=(0, 1))(v, jnp.asarray(x))
  ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(c, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
  xt = _torch_layout(x).requires_grad_(True)
  (torch.sin(ref(xt)) * _torch_layout(w)).sum().backward()
  np.testing.assert_allclose(np.asarray(gx), np.moveaxis(xt.grad.numpy(), 1, -1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gv["params"]["scale"], ref.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gv["params"]["bias"], ref.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_synced_statistics_and_gradients_equal_one_batch():
  """BN synced over an axis of 2 halves (`axis_name`, as under pmap) = BN over the whole batch:
  outputs, running statistics and the gradients of both halves."""
  rng = np.random.RandomState(4)
  x = jnp.asarray((rng.randn(6, 5, 4) * 3 - 1).astype(np.float32))
  w = jnp.asarray(rng.randn(6, 5, 4).astype(np.float32))
  whole, synced = BatchNorm(momentum=0.9), BatchNorm(momentum=0.9, axis_name="devices")
  v = whole.init(jax.random.PRNGKey(0), x, use_running_average=False)
  v = {"params": {"scale": jnp.full(4, 1.5), "bias": jnp.full(4, 0.25)},
       "batch_stats": v["batch_stats"]}

  def step(bn, x, w):
    def loss(params, x):
      y, upd = bn.apply({**v, "params": params}, x, use_running_average=False,
                        mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y) * w), (y, upd)
    (_, (y, upd)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(v["params"], x)
    return y, upd["batch_stats"], grads

  y1, stats1, (gp1, gx1) = step(whole, x, w)
  halves = lambda a: a.reshape((2, 3) + a.shape[1:])
  y2, stats2, (gp2, gx2) = jax.vmap(lambda x, w: step(synced, x, w), axis_name="devices")(
      halves(x), halves(w))
  np.testing.assert_allclose(y2.reshape(y1.shape), y1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gx2.reshape(gx1.shape), gx1, rtol=1e-5, atol=1e-6)
  for key in ("mean", "var"):
    np.testing.assert_allclose(stats2[key][0], stats1[key], rtol=1e-5, atol=1e-6)
  for key in ("scale", "bias"):  # Each half's local share; the train step averages them.
    np.testing.assert_allclose(gp2[key].sum(axis=0), gp1[key], rtol=1e-5, atol=1e-5)

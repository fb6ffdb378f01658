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

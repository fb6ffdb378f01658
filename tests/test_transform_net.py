"""Transform net T: identity at init, the predicted matrix applied the right way round (§1.6)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax.models.transform_net import TransformNet

B, N, C, RANK = 2, 9, 6, 3


def _inputs():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(B, N, C)).astype(np.float32),
          rng.uniform(-1, 1, size=(B, N, 3)).astype(np.float32))


def _init(mode):
  s, d = _inputs()
  model = TransformNet(mode, RANK)
  return model, jax.jit(lambda r: model.init(r, s, d, train=False))(jax.random.key(0)), s, d


@pytest.mark.parametrize("mode", ["full", "lowrank"])
def test_identity_at_init(mode):
  model, variables, s, d = _init(mode)
  run = jax.jit(lambda v: [model.apply(v, s, d, train=t, mutable=["batch_stats"])[0]
                           for t in (False, True)])
  for out in run(variables):
    np.testing.assert_allclose(np.asarray(out), s, rtol=1e-6, atol=1e-6)


def test_full_applies_the_predicted_matrix_to_points_and_coordinates():
  model, variables, s, d = _init("full")
  params = flax.core.unfreeze(variables["params"])
  a = np.random.default_rng(1).normal(size=(C + 3, C + 3)).astype(np.float32)
  params["fc3"]["kernel"] = np.zeros_like(params["fc3"]["kernel"])
  params["fc3"]["bias"] = a.reshape(-1)  # A = a for every clip, whatever the trunk says.
  out = jax.jit(lambda v: model.apply(v, s, d, train=False))({**variables, "params": params})
  want = np.concatenate([s, d], -1) @ a
  np.testing.assert_allclose(np.asarray(out), want[..., :C], rtol=1e-5, atol=1e-5)
  assert params["fc3"]["bias"].size == (C + 3)**2


def test_lowrank_is_identity_plus_u_v_transposed():
  model, variables, s, d = _init("lowrank")
  params = flax.core.unfreeze(variables["params"])
  rng = np.random.default_rng(2)
  u, v = (rng.normal(size=(C + 3, RANK)).astype(np.float32) for _ in range(2))
  for name, value in (("fc_u", u), ("fc_v", v)):
    params[name]["kernel"] = np.zeros_like(params[name]["kernel"])
    params[name]["bias"] = value.reshape(-1)
  out = jax.jit(lambda v: model.apply(v, s, d, train=False))({**variables, "params": params})
  want = np.concatenate([s, d], -1) @ (np.eye(C + 3) + u @ v.T)
  np.testing.assert_allclose(np.asarray(out), want[..., :C], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "lowrank"])
def test_gradient_reaches_the_predicted_matrix(mode):
  model, variables, s, d = _init(mode)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, s, d, train=True, mutable=["batch_stats"])
    return jnp.sum(out * jnp.arange(C, dtype=jnp.float32))

  grads = jax.jit(jax.grad(loss))(variables["params"])
  last = "fc3" if mode == "full" else "fc_v"
  assert float(jnp.abs(grads[last]["kernel"]).max()) > 0
  assert float(jnp.abs(grads[last]["bias"]).max()) > 0


def test_none_passes_features_through_without_parameters():
  model, variables, s, d = _init("none")
  assert not variables.get("params")
  np.testing.assert_array_equal(np.asarray(model.apply(variables, s, d, train=False)), s)


def test_bad_mode():
  s, d = _inputs()
  with pytest.raises(ValueError, match=r"transform_mode.*full"):
    TransformNet("diag").init(jax.random.key(0), s, d, train=False)

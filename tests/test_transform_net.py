"""Transform net T: A = I + f at init and under decay, the matrix applied the right way round
(§1.6), and old checkpoints (fc3 predicting A itself) converted on load to the same function."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import checkpoints, models
from aknet_jax.checkpoints import architecture, restore
from aknet_jax.models.batch_norm import norm_layer
from aknet_jax.models.transform_net import TransformNet
from conftest import load_config

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


def test_full_is_exactly_the_identity_at_init():
  """fc3's kernel and bias start at zero, so f = 0 and the output is the input, bit for bit."""
  model, variables, s, d = _init("full")
  fc3 = variables["params"]["fc3"]
  assert not np.any(np.asarray(fc3["kernel"])) and not np.any(np.asarray(fc3["bias"]))
  out, _ = jax.jit(lambda v: model.apply(v, s, d, train=True, mutable=["batch_stats"]))(variables)
  np.testing.assert_array_equal(np.asarray(out), s)


def test_full_applies_the_predicted_matrix_to_points_and_coordinates():
  model, variables, s, d = _init("full")
  params = flax.core.unfreeze(variables["params"])
  a = np.random.default_rng(1).normal(size=(C + 3, C + 3)).astype(np.float32)
  params["fc3"]["kernel"] = np.zeros_like(params["fc3"]["kernel"])
  params["fc3"]["bias"] = a.reshape(-1)  # f = a for every clip, whatever the trunk says.
  out = jax.jit(lambda v: model.apply(v, s, d, train=False))({**variables, "params": params})
  want = np.concatenate([s, d], -1) @ (np.eye(C + 3) + a)  # A = I + f.
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


def _perturbed(variables, seed, scale=0.3):
  """Every parameter moved by Gaussian noise: a 'trained' transform net with a non-trivial A."""
  leaves, tree = jax.tree_util.tree_flatten(flax.core.unfreeze(variables["params"]))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return {**variables, "params": jax.tree_util.tree_unflatten(tree, leaves)}


def test_decay_of_f_pulls_a_toward_the_identity():
  """Weight decay shrinks fc3's kernel and bias toward 0; the output moves to the input linearly."""
  model, variables, s, d = _init("full")
  variables = _perturbed(variables, 3)
  run = jax.jit(lambda v: model.apply(v, s, d, train=False))

  def with_fc3_scaled(gamma):
    params = flax.core.unfreeze(variables["params"])
    params["fc3"] = jax.tree_util.tree_map(lambda x: gamma * x, params["fc3"])
    return np.asarray(run({**variables, "params": params}))

  full, half, zero = (with_fc3_scaled(g) for g in (1.0, 0.5, 0.0))
  assert np.abs(full - s).max() > 0.1  # The perturbed net does mix the channels.
  np.testing.assert_array_equal(zero, s)  # f's params at 0 (decay's limit) => A = I.
  np.testing.assert_allclose(half - s, 0.5 * (full - s), rtol=1e-5, atol=1e-5)


class _OldTransformNet(nn.Module):
  """The full transform as it was before A = I + f: fc3 predicts A itself, bias initialised to I."""

  @nn.compact
  def __call__(self, s, d, *, train: bool):
    c = s.shape[-1]
    c3 = c + 3
    conv = functools.partial(nn.Conv, kernel_size=(1,))
    norm = norm_layer(train=train, momentum=0.9, axis_name=None, dtype=jnp.float32)
    p = jnp.concatenate([s, d], axis=-1)
    z = p
    for i, features in enumerate((64, 128, 1024), start=1):
      z = nn.relu(norm(name=f"bn{i}")(conv(features, name=f"conv{i}")(z)))
    z = jnp.max(z, axis=1)
    z = nn.relu(norm(name="bn4")(nn.Dense(512, name="fc1")(z)))
    z = nn.relu(norm(name="bn5")(nn.Dense(256, name="fc2")(z)))
    a = nn.Dense(c3 * c3, kernel_init=nn.initializers.zeros,
                 bias_init=lambda k, shape, dtype=jnp.float32: jnp.eye(c3, dtype=dtype).ravel(),
                 name="fc3")(z).reshape(-1, c3, c3)
    return jnp.einsum("bnk,bkc->bnc", p, a[:, :, :c])


def _old_meta(**arch):
  return {"architecture": {"kind": "aknet", "transform_mode": "full", **arch}, "step": 7}


def test_old_format_variables_convert_to_the_same_function():
  """An old tree (bias = I + what training added) minus I on fc3's bias computes the same A."""
  s, d = _inputs()
  old = _OldTransformNet()
  variables = old.init(jax.random.key(0), s, d, train=False)
  np.testing.assert_array_equal(variables["params"]["fc3"]["bias"], np.eye(C + 3).ravel())
  variables = _perturbed(variables, 4)
  want = np.asarray(jax.jit(lambda v: old.apply(v, s, d, train=False))(variables))
  # As a checkpoint's tree: the transform net's variables under AK-Net's 'transform' scope.
  tree = {k: {"transform": v} for k, v in variables.items()}
  meta = _old_meta()
  assert architecture.stores_transform_matrix(meta, None)
  new_tree, new_meta = restore.upgrade_transform(tree, meta, None)
  assert new_meta["architecture"]["transform_identity"] == "added"
  assert not architecture.stores_transform_matrix(new_meta, None)
  assert "transform_identity" not in meta["architecture"]  # The caller's meta is left alone.
  new = {k: v["transform"] for k, v in new_tree.items()}
  got = np.asarray(jax.jit(lambda v: TransformNet("full").apply(v, s, d, train=False))(new))
  assert np.abs(want - s).max() > 0.1
  # fp32: the two forms round differently (p @ A vs p + p @ (A - I)); 1e-5 of the output's scale.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # Converting is done once: a converted (or new) checkpoint comes back unchanged.
  assert restore.upgrade_transform(new_tree, new_meta, None)[0] is new_tree


@pytest.mark.parametrize("meta", [
    _old_meta(transform_identity="added"),  # New format.
    {"architecture": {"kind": "aknet", "transform_mode": "lowrank"}},  # Always I + U V^T.
    {"architecture": {"kind": "video_net"}},  # No transform net.
])
def test_other_checkpoints_are_not_converted(meta):
  assert not architecture.stores_transform_matrix(meta, None)
  tree = {"params": {}}
  assert restore.upgrade_transform(tree, meta, None) == (tree, meta)


def test_old_aknet_checkpoint_loads_converted_and_cannot_be_resumed(tmp_path):
  """load_model_variables (eval / predict / export) converts; resuming training refuses it."""
  cfg = load_config("synthetic", "tiny,stage=2,transform=full")
  variables = flax.core.unfreeze(models.init_variables(cfg, "aknet", jax.random.PRNGKey(0)))
  assert architecture.record(cfg, "aknet")["transform_identity"] == "added"
  assert "transform_identity" not in architecture.record(cfg, "video_net")
  fc3 = variables["params"]["transform"]["fc3"]
  trained = np.random.default_rng(5).normal(size=fc3["bias"].shape).astype(np.float32)
  c3 = int(np.sqrt(trained.size))
  fc3["bias"] = trained + np.eye(c3, dtype=np.float32).ravel()  # Old format: A itself.
  arch = architecture.record(cfg, "aknet")
  del arch["transform_identity"]
  meta = {"architecture": arch, "step": 4}
  directory = str(tmp_path / "stage2" / "checkpoints")
  checkpoints.write_variables(directory, 4, variables, meta)
  with pytest.raises(ValueError, match=r"predates A = I \+ f.*cannot resume") as info:
    architecture.check(meta, cfg, "aknet", directory)
  assert "\n" not in str(info.value)
  kind, loaded, new_meta, _ = restore.load_model_variables(cfg, str(tmp_path))
  assert kind == "aknet" and new_meta["architecture"]["transform_identity"] == "added"
  np.testing.assert_allclose(np.asarray(loaded["params"]["transform"]["fc3"]["bias"]), trained,
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(loaded["params"]["transform"]["fc3"]["kernel"]),
                                np.asarray(fc3["kernel"]))


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 2)])
def test_wide_dense_equals_flax_dense_with_gradients(lead):
  """fc3's layer (`models.wide_dense.WideDense`, its input gradient a read of the kernel's rows on
  CPU) has nn.Dense's variables, values and gradients, for one row (a matvec) and several."""
  from aknet_jax.models.wide_dense import WideDense
  z = jax.random.normal(jax.random.key(1), lead + (16,))
  ref, ours = nn.Dense(3000), WideDense(3000)
  v = ref.init(jax.random.key(0), z)
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
  assert jax.tree.structure(ours.init(jax.random.key(0), z)) == jax.tree.structure(v)
  np.testing.assert_allclose(ours.apply(v, z), ref.apply(v, z), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(jax.random.key(3), lead + (3000,))
  (gv, gz), (rv, rz) = (jax.vjp(m.apply, v, z)[1](g) for m in (ours, ref))
  np.testing.assert_allclose(gz, rz, rtol=1e-5, atol=1e-4)
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="WideDense needs use_bias=True"):
    WideDense(3000, use_bias=False).init(jax.random.key(0), z)

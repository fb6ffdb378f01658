"""AK-Net end to end on a tiny net: call contract, keypoints, gradients, bf16, pmap."""

import functools
import os
import pickle
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import config as config_lib
from aknet_jax import models
from aknet_jax.train import losses

B, T, S, K = 2, 4, 64, 5


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.stage = "2"
  c.model.backbone, c.model.depth, c.model.width = "tsm", 18, 8
  c.model.dropout = 0.0
  c.dataset.num_segments, c.dataset.image_size, c.dataset.num_classes = T, S, K
  c.model.aknet.se_reduction, c.model.aknet.transform_rank = 4, 4
  for path, value in overrides.items():
    *heads, leaf = path.split(".")
    node = c
    for h in heads:
      node = node[h]
    node[leaf] = value
  return config_lib.validate(c)


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  variables = models.init_variables(config, "aknet", jax.random.key(0))
  frames = jax.random.normal(jax.random.key(1), (B, T, S, S, 3))
  return config, models.build(config, "aknet"), variables, frames


def test_build_picks_the_model_for_the_kind():
  assert isinstance(models.build(tiny_config(stage="1"), "video_net"), models.VideoNet)
  assert isinstance(models.build(tiny_config(stage="both"), "aknet"), models.AKNet)
  assert models.feature_grid(tiny_config()) == (4, 4) and models.feature_stride(tiny_config()) == 16
  assert models.feature_grid(tiny_config(**{"model.aknet.split": "res3"})) == (8, 8)


def test_call_contract_and_keypoints(setup):
  config, model, variables, frames = setup
  h = w = 4
  n = round(0.3 * T * h * w)
  assert set(variables["params"]) == {"backbone", "heatmap", "transform", "points", "head", "aux"}
  # Inference never touches the auxiliary head: it runs without its parameters.
  no_aux = {c: {k: v for k, v in variables[c].items() if k != "aux"} for c in variables}

  @jax.jit
  def run(variables, no_aux, frames):
    logits = model.apply(variables, frames, train=False)
    logits2, kp = model.apply(no_aux, frames, train=False, return_keypoints=True)
    out, _ = model.apply(variables, frames, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(2)})
    return logits, logits2, kp, out

  logits, logits2, kp, out = run(variables, no_aux, frames)
  assert logits.shape == (B, K) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(logits2), np.asarray(logits))
  xyt, heat = np.asarray(kp["xyt"]), np.asarray(kp["heatmap"])
  assert xyt.dtype == np.int32 and xyt.shape == (B, n, 3) and heat.shape == (B, T, h, w)
  np.testing.assert_allclose(heat.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(heat.max(axis=(1, 2, 3)), 1.0, atol=1e-4)
  for i in range(B):
    x, y, t = xyt[i].T
    assert x.max() < w and y.max() < h and t.max() < T and xyt[i].min() >= 0
    flat = t * h * w + y * w + x
    assert len(set(flat.tolist())) == n
    chosen = np.zeros(T * h * w, bool)
    chosen[flat] = True
    assert heat[i].ravel()[chosen].min() >= heat[i].ravel()[~chosen].max()  # The top-n cells.
    key = x + y + (h + w) * t
    np.testing.assert_array_equal(flat, flat[np.lexsort((flat, -key))])  # Ranked order.
  assert set(out) == {"logits", "aux_logits", "heatmap"}
  assert out["logits"].shape == out["aux_logits"].shape == (B, K)
  assert out["heatmap"].shape == (B, T, h, w) and out["heatmap"].dtype == jnp.float32


def test_gradients_reach_the_heatmap_only_through_aux_head_and_regularizer(setup):
  config, model, variables, frames = setup
  labels = jnp.arange(B) % K

  def loss_terms(params):
    out, _ = model.apply({**variables, "params": params}, frames, train=True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    return jnp.stack([losses.compute_loss(out, labels, config)[0],
                      losses.cross_entropy(out["logits"], labels),
                      losses.cross_entropy(out["aux_logits"], labels),
                      losses.heatmap_regularizer(out["heatmap"])])

  grads = jax.jit(jax.jacrev(loss_terms))(variables["params"])
  norm = lambda g, i: float(sum(jnp.abs(x[i]).sum() for x in jax.tree_util.tree_leaves(g)))
  assert np.isfinite(norm(grads, 0))
  for name in ("backbone", "heatmap", "transform", "points", "head", "aux"):
    assert norm(grads[name], 0) > 0, name
  assert norm(grads["heatmap"], 1) == 0.0  # The classifier sees the heatmap only via top-k.
  assert norm(grads["heatmap"], 2) > 0  # Through the auxiliary head,
  assert norm(grads["heatmap"], 3) > 0  # and through the regulariser.


def test_bfloat16_runs_and_returns_float32_logits(setup):
  _, _, variables, frames = setup
  model = models.build(tiny_config(half_precision=True), "aknet")
  out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(0)}))(variables, frames)
  assert out["logits"].dtype == out["aux_logits"].dtype == out["heatmap"].dtype == jnp.float32
  assert all(np.all(np.isfinite(np.asarray(x))) for x in out.values())


def test_too_few_points_is_a_clear_error():
  config = tiny_config(**{"model.aknet.alpha": 0.001})  # round(0.001 * 4 * 4 * 4) = 0.
  with pytest.raises(ValueError, match=r"model\.aknet\.alpha.*N >= 1"):
    jax.eval_shape(functools.partial(models.init_variables, config, "aknet"), jax.random.key(0))


_PMAP_SCRIPT = textwrap.dedent('''
    import pickle, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    import jax, jax.numpy as jnp, numpy as np
    from test_aknet import tiny_config
    from aknet_jax import models
    from aknet_jax.train import losses
    assert jax.local_device_count() == 2
    config = tiny_config()
    with open({variables!r}, 'rb') as f:
      variables, frames = pickle.load(f)
    labels = jnp.arange(2)

    def step(params, stats, x, y):
      model = models.build(config, 'aknet', bn_axis_name='batch')
      def loss_fn(params):
        out, _ = model.apply({{'params': params, 'batch_stats': stats}}, x, train=True,
                             mutable=['batch_stats'], rngs={{'dropout': jax.random.key(0)}})
        return losses.compute_loss(out, y, config)[0], out['logits']
      (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return jax.lax.pmean(loss, 'batch'), logits, jax.lax.pmean(g, 'batch')

    rep = lambda t: jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), t)
    loss, logits, grads = jax.pmap(step, axis_name='batch')(
        rep(variables['params']), rep(variables['batch_stats']), frames[:, None], labels[:, None])
    model = models.build(config, 'aknet')
    train = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                     rngs={{'dropout': jax.random.key(0)}})
    out, _ = jax.jit(train)(variables, frames)
    # BN over both replicas == BN over the whole batch: same logits, same mean loss.
    np.testing.assert_allclose(np.asarray(logits)[:, 0], np.asarray(out['logits']), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(float(loss[0]), float(losses.compute_loss(out, labels, config)[0]),
                               rtol=1e-4)
    flat = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in flat)
    assert float(jnp.abs(grads['heatmap']['fc1']['kernel'][0]).max()) > 0
    print('PMAP_OK')
''')


def test_pmap_with_cross_replica_batch_norm(setup, tmp_path):
  _, _, variables, frames = setup
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = tmp_path / "variables.pkl"
  with open(path, "wb") as f:
    pickle.dump(jax.device_get((variables, frames)), f)
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  script = _PMAP_SCRIPT.format(root=root, tests=os.path.join(root, "tests"), variables=str(path))
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0 and "PMAP_OK" in result.stdout, result.stderr[-3000:]


def test_aux_head_takes_our_conv_paths_with_flax_conv_gradients(monkeypatch):
  """The auxiliary head's strided 3x3 convs run `models.conv.Conv` (im2col weight gradients on
  CPU): same variables, values and gradients as with `nn.Conv`."""
  import types
  from aknet_jax.models import aknet as aknet_lib
  x = jax.random.normal(jax.random.key(1), (2, 2, 6, 6, 64))
  head = aknet_lib.AuxHead(num_classes=5)
  v = head.init(jax.random.key(0), x, train=False)

  def grads():
    def loss(params, x):
      out, _ = head.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(out))
    return jax.grad(loss, argnums=(0, 1))(v["params"], x)

  ours = grads()
  monkeypatch.setattr(aknet_lib, "conv_lib", types.SimpleNamespace(Conv=nn.Conv))
  assert jax.tree.structure(head.init(jax.random.key(0), x, train=False)) == jax.tree.structure(v)
  ref = grads()
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

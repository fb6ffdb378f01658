"""Loss of the backbone and of AK-Net against a NumPy reference (design §1.10)."""

import jax
import jax.numpy as jnp
import numpy as np

from aknet_jax import config as config_lib
from aknet_jax.train import losses


def _np_ce(logits, labels):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels].mean()


def _outputs(rng, b=4, k=7):
  return {"logits": rng.normal(size=(b, k)).astype(np.float32) * 3,
          "aux_logits": rng.normal(size=(b, k)).astype(np.float32),
          "heatmap": rng.uniform(size=(b, 3, 5, 5)).astype(np.float32)}, rng.integers(0, k, size=b)


def test_stage1_loss_is_cross_entropy():
  rng = np.random.default_rng(0)
  outputs, labels = _outputs(rng)
  config = config_lib.base_config()
  loss, metrics = losses.compute_loss({"logits": outputs["logits"]}, labels, config)
  np.testing.assert_allclose(float(loss), _np_ce(outputs["logits"], labels), rtol=1e-5)
  assert set(metrics) == {"ce", "loss"}


def test_aknet_loss_matches_reference_and_weight():
  rng = np.random.default_rng(1)
  outputs, labels = _outputs(rng)
  config = config_lib.base_config()
  config.model.aknet.reg_weight = 0.7
  loss, metrics = jax.jit(lambda o, l: losses.compute_loss(o, l, config))(outputs, labels)
  ce, aux = _np_ce(outputs["logits"], labels), _np_ce(outputs["aux_logits"], labels)
  h = outputs["heatmap"].astype(np.float64)
  r_e = np.mean(4 * h * (1 - h))
  np.testing.assert_allclose(float(loss), (ce + aux) / 2 + 0.7 * r_e, rtol=1e-5)
  near0, near1 = np.mean(h < 0.05), np.mean(h > 0.95)  # Ĥ's distribution, for TensorBoard.
  for name, want in (("ce", ce), ("aux_ce", aux), ("r_e", r_e), ("loss", float(loss)),
                     ("heatmap_near0", near0), ("heatmap_near1", near1)):
    assert metrics[name].shape == ()
    np.testing.assert_allclose(float(metrics[name]), want, rtol=1e-5)


def test_regularizer_bounds_and_gradient():
  assert float(losses.heatmap_regularizer(jnp.asarray([0.0, 1.0, 1.0, 0.0]))) == 0.0
  assert float(losses.heatmap_regularizer(jnp.full((2, 2), 0.5))) == 1.0
  h = jnp.asarray([0.1, 0.5, 0.9])
  g = jax.grad(losses.heatmap_regularizer)(h)
  np.testing.assert_allclose(np.asarray(g), 4 * (1 - 2 * np.asarray(h)) / 3, rtol=1e-6, atol=1e-7)

"""The paper's ablation switches under model.aknet: each builds, trains, and does what it says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import models
from aknet_jax.models import keypoints
from aknet_jax.train import losses
from test_aknet import B, K, S, T, tiny_config

_FRAMES = jax.random.normal(jax.random.key(1), (B, T, S, S, 3))


def _run(with_grads=True, **overrides):
  """Builds the tiny AK-Net with `model.aknet` overrides; one training-mode gradient (finite
  everywhere) unless `with_grads` is False, and the eval keypoints."""
  config = tiny_config(**{f"model.aknet.{k}": v for k, v in overrides.items()})
  model = models.build(config, "aknet")
  variables = models.init_variables(config, "aknet", jax.random.key(0))
  if not with_grads:
    _, kp = jax.jit(lambda v: model.apply(v, _FRAMES, train=False, return_keypoints=True))(variables)
    return config, variables, None, None, np.asarray(kp["xyt"]), np.asarray(kp["heatmap"])

  def loss(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, _FRAMES,
                         train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return losses.compute_loss(out, jnp.arange(B) % K, config)

  (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
  _, kp = jax.jit(lambda v: model.apply(v, _FRAMES, train=False, return_keypoints=True))(variables)
  return config, variables, metrics, grads, np.asarray(kp["xyt"]), np.asarray(kp["heatmap"])


def test_ranking_orders_the_same_points_three_ways():
  _, _, _, _, xyt, _ = _run(False, ranking="xyt")
  _, _, _, _, by_score, heat = _run(False, ranking="score")
  _, _, _, _, shuffled, _ = _run(False, ranking="random")
  h = w = S // 16
  for i in range(B):
    flat = lambda a: (a[:, 2] * h * w + a[:, 1] * w + a[:, 0]).tolist()  # noqa: E731
    assert sorted(flat(xyt[i])) == sorted(flat(by_score[i])) == sorted(flat(shuffled[i]))
    key = xyt[i, :, 0] + xyt[i, :, 1] + (h + w) * xyt[i, :, 2]
    assert np.all(np.diff(key) <= 0)  # The paper's order: x + y + tau * t, descending.
    scores = heat[i][by_score[i, :, 2], by_score[i, :, 1], by_score[i, :, 0]]
    assert np.all(np.diff(scores) <= 1e-6)  # Without ranking: the top-k order, best first.
    assert flat(shuffled[i]) != flat(by_score[i])
  with pytest.raises(ValueError, match="model.aknet.ranking"):
    keypoints.select_and_rank(jnp.zeros((1, 1, 2, 2)), jnp.zeros((1, 1, 2, 2, 3)), 2, 4.0, "bogus")


def test_head_without_global_pool_and_with_position_embedding():
  shapes = lambda **kw: models.variable_shapes(  # noqa: E731
      tiny_config(**{f"model.aknet.{k}": v for k, v in kw.items()}), "aknet")
  with_g, without_g = shapes(), shapes(concat_global=False)
  c_split, c_out = 8 * 4 * 1, 8 * 8 * 1  # res4 and res5 channels of the width-8 ResNet-18.
  assert with_g["params"]["head"]["kernel"].shape == (c_split + c_out, K)
  assert without_g["params"]["head"]["kernel"].shape == (c_out, K)
  _, emb, _, grads, _, _ = _run(position_embedding=True)
  assert emb["params"]["position"]["kernel"].shape == (3, c_split)
  assert float(jnp.abs(grads["position"]["kernel"]).max()) > 0  # It learns.


def test_without_the_aux_head_the_loss_is_ce_plus_the_regulariser():
  config, variables, metrics, grads, _, _ = _run(aux_head=False)
  assert "aux" not in variables["params"] and "aux_ce" not in metrics
  want = float(metrics["ce"]) + config.model.aknet.reg_weight * float(metrics["r_e"])
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-6)
  assert float(jnp.abs(grads["heatmap"]["fc1"]["kernel"]).max()) > 0  # Through r_e alone.


def test_q_init_random_leaves_q_uncompacted():
  config1 = tiny_config(stage="1")
  stage1 = models.init_variables(config1, "video_net", jax.random.key(3))
  compact = models.compact(stage1, tiny_config(), jax.random.key(4))
  fresh = models.compact(stage1, tiny_config(**{"model.aknet.q_init": "random"}), jax.random.key(4))
  want = np.asarray(stage1["params"]["backbone"]["layer4_0"]["conv1"]["kernel"]).sum(axis=1)
  np.testing.assert_allclose(compact["params"]["points"]["layer4_0"]["conv1"]["kernel"], want,
                             rtol=1e-6)
  assert not np.allclose(fresh["params"]["points"]["layer4_0"]["conv1"]["kernel"], want)
  np.testing.assert_array_equal(fresh["params"]["backbone"]["conv1"]["kernel"],
                                stage1["params"]["backbone"]["conv1"]["kernel"])  # F still copied.

"""Keypoint selection, ranking and coordinates against NumPy references (design §1.2-§1.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax.models import keypoints


def test_normalize_heatmap_per_clip_min_max():
  rng = np.random.default_rng(0)
  scale = np.array([1, 10, 100], np.float32)[:, None, None, None]
  h = rng.gamma(2.0, size=(3, 4, 5, 6)).astype(np.float32) * scale
  got = np.asarray(keypoints.normalize_heatmap(jnp.asarray(h)))
  lo = h.min(axis=(1, 2, 3), keepdims=True)
  hi = h.max(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(got, (h - lo) / (hi - lo + 1e-6), rtol=1e-5, atol=1e-6)
  assert got.min() >= 0 and got.max() <= 1
  flat = np.asarray(keypoints.normalize_heatmap(jnp.ones((1, 2, 3, 3))))
  np.testing.assert_array_equal(flat, 0.0)  # A constant map stays finite.


def test_num_points_rounding_and_validation():
  assert keypoints.num_points(0.3, 8, 14, 14) == 470  # 470.4
  assert keypoints.num_points(1.0, 4, 2, 2) == 16
  assert keypoints.num_points(0.5, 1, 1, 3) == 2  # 1.5 rounds up.
  for alpha in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match=r"model\.aknet\.alpha.*\(0, 1\]"):
      keypoints.num_points(alpha, 4, 4, 4)
  with pytest.raises(ValueError, match=r"model\.aknet\.alpha.*N >= 1"):
    keypoints.num_points(0.001, 2, 4, 4)


def test_top_k_picks_the_highest_cells_jointly_over_frames():
  rng = np.random.default_rng(1)
  b, t, h, w, c, n = 3, 4, 5, 6, 7, 37
  scores = rng.normal(size=(b, t, h, w)).astype(np.float32)
  scores[0, 2] += 5.0  # Clip 0: frame 2 dominates, so frames must contribute unequal counts.
  feats = rng.normal(size=(b, t, h, w, c)).astype(np.float32)
  idx = np.asarray(keypoints.select_top_k(jnp.asarray(scores), n))
  for i in range(b):
    want = np.argsort(-scores[i].ravel(), kind="stable")[:n]
    assert set(idx[i].tolist()) == set(want.tolist())
  assert np.sum(idx[0] // (h * w) == 2) == h * w
  got = np.asarray(keypoints.gather_points(jnp.asarray(feats), jnp.asarray(idx)))
  np.testing.assert_array_equal(got, feats.reshape(b, -1, c)[np.arange(b)[:, None], idx])


def test_flat_to_xyt_matches_unravel_index():
  t, h, w = 3, 4, 5
  idx = np.arange(t * h * w).reshape(2, -1)
  xyt = np.asarray(keypoints.flat_to_xyt(jnp.asarray(idx), h, w))
  tt, yy, xx = np.unravel_index(idx, (t, h, w))
  np.testing.assert_array_equal(xyt, np.stack([xx, yy, tt], -1))
  assert xyt.dtype == np.int32


def _reference_rank(idx, h, w, tau):
  """NumPy: sort by -(x + y + tau t), then by flat index (np.lexsort's last key is the primary)."""
  tt, yy, xx = idx // (h * w), (idx % (h * w)) // w, idx % w
  key = xx + yy + tau * tt
  return idx[np.lexsort((idx, -key))]


@pytest.mark.parametrize("tau", [-1.0, 2.0, 1.5, 7.0])
def test_ranking_matches_numpy_lexsort(tau):
  rng = np.random.default_rng(2)
  b, t, h, w, c, n = 4, 3, 6, 5, 2, 40
  scores = rng.normal(size=(b, t, h, w)).astype(np.float32)
  feats = rng.normal(size=(b, t, h, w, c)).astype(np.float32)
  tau_used = keypoints.default_tau(tau, h, w)
  pts, xyt = jax.jit(keypoints.select_and_rank, static_argnums=(2, 3))(
      jnp.asarray(scores), jnp.asarray(feats), n, tau_used)
  pts, xyt = np.asarray(pts), np.asarray(xyt)
  for i in range(b):
    chosen = np.argsort(-scores[i].ravel(), kind="stable")[:n]
    want = _reference_rank(chosen, h, w, tau_used)
    got = xyt[i, :, 2] * h * w + xyt[i, :, 1] * w + xyt[i, :, 0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pts[i], feats[i].reshape(-1, c)[want])
  if tau <= 0:  # tau = h + w keeps frames contiguous, latest frame first.
    assert np.all(np.diff(xyt[..., 2], axis=1) <= 0)


def test_ranking_ties_go_by_flat_index():
  h = w = 3
  idx = jnp.asarray([[2, 4, 6, 0, 8]])  # (x, y) = (2,0) (1,1) (0,2) (0,0) (2,2); keys 2 2 2 0 4.
  perm = keypoints.rank_order(idx, keypoints.flat_to_xyt(idx, h, w), 6.0)
  np.testing.assert_array_equal(np.asarray(idx)[0, np.asarray(perm)[0]], [8, 2, 4, 6, 0])


def test_normalize_coordinates():
  rng = np.random.default_rng(3)
  xyt = rng.integers(0, 9, size=(2, 11, 3)).astype(np.int32)
  got = np.asarray(keypoints.normalize_coordinates(jnp.asarray(xyt)))
  d = xyt.astype(np.float64) - xyt.mean(axis=1, keepdims=True)
  d /= np.linalg.norm(d, axis=-1).max(axis=1)[:, None, None]
  np.testing.assert_allclose(got, d, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1).max(axis=1), 1.0, rtol=1e-6)
  same = np.asarray(keypoints.normalize_coordinates(jnp.full((1, 4, 3), 5, jnp.int32)))
  np.testing.assert_array_equal(same, 0.0)  # d_max = 0 guarded: no NaN.

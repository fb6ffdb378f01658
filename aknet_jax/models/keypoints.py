"""Keypoint selection on the split feature map: normalisation, top-k, gather, ranking, coordinates.

Pure functions of arrays. Coordinates are integers in feature-grid units:
x = column, y = row, t = frame; a flat index over one clip is t*h*w + y*w + x.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def normalize_heatmap(heatmap: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Per-clip min-max normalisation of (B, T, h, w) scores to [0, 1]: the regulariser 4H(1-H) needs
  H in [0, 1] (on the raw, unbounded post-ReLU H it would reward H -> inf); top-k is unchanged."""
  axes = tuple(range(1, heatmap.ndim))
  lo = jnp.min(heatmap, axis=axes, keepdims=True)
  hi = jnp.max(heatmap, axis=axes, keepdims=True)
  return (heatmap - lo) / (hi - lo + eps)


def num_points(alpha: float, t: int, h: int, w: int) -> int:
  """N = round(alpha * T * h * w), halves up; ValueError unless alpha in (0, 1] and N >= 1."""
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f"config.model.aknet.alpha: {alpha!r} must be in (0, 1]")
  n = int(math.floor(alpha * t * h * w + 0.5))
  if n < 1:
    raise ValueError(f"config.model.aknet.alpha: {alpha!r} keeps round({alpha} * {t}*{h}*{w}) = "
                     f"{n} points; raise alpha to at least {0.5 / (t * h * w):.3g} so that N >= 1")
  return n


def select_top_k(scores: jax.Array, n: int) -> jax.Array:
  """Flat indices (B, n) int32 of the n highest cells of (B, T, h, w) scores, over all frames."""
  flat = scores.reshape(scores.shape[0], -1)
  _, idx = jax.lax.top_k(flat.astype(jnp.float32), n)
  return idx.astype(jnp.int32)


def gather_points(features: jax.Array, idx: jax.Array) -> jax.Array:
  """Features (B, T, h, w, C) at flat indices (B, N) -> (B, N, C)."""
  b, c = features.shape[0], features.shape[-1]
  flat = features.reshape(b, -1, c)
  return jnp.take_along_axis(flat, idx[..., None], axis=1)


def flat_to_xyt(idx: jax.Array, h: int, w: int) -> jax.Array:
  """Flat indices (..., N) over (T, h, w) -> int32 (..., N, 3) coordinates (x, y, t)."""
  t, rest = jnp.divmod(idx, h * w)
  y, x = jnp.divmod(rest, w)
  return jnp.stack([x, y, t], axis=-1).astype(jnp.int32)


def default_tau(tau: float, h: int, w: int) -> float:
  """The ranking's frame weight: `tau` itself when > 0, else h + w (each frame stays contiguous)."""
  return float(tau) if tau > 0 else float(h + w)


def rank_order(idx: jax.Array, xyt: jax.Array, tau: float) -> jax.Array:
  """Permutation (B, N) sorting points by x + y + tau*t descending; ties by flat index ascending."""
  xyt = xyt.astype(jnp.float32)
  key = xyt[..., 0] + xyt[..., 1] + tau * xyt[..., 2]
  iota = jnp.broadcast_to(jnp.arange(idx.shape[-1], dtype=jnp.int32), idx.shape)
  _, _, perm = jax.lax.sort((-key, idx, iota), dimension=-1, is_stable=True, num_keys=2)
  return perm


def normalize_coordinates(xyt: jax.Array) -> jax.Array:
  """(B, N, 3) grid coordinates -> centred on the clip's centroid, divided by the max distance."""
  d = xyt.astype(jnp.float32)
  d = d - jnp.mean(d, axis=1, keepdims=True)
  d_max = jnp.max(jnp.linalg.norm(d, axis=-1), axis=1)[:, None, None]
  return d / jnp.where(d_max > 0, d_max, 1.0)


RANKINGS = ("xyt", "score", "random")


def select_and_rank(scores: jax.Array, features: jax.Array, n: int, tau: float,
                    ranking: str = "xyt"):
  """Top-n cells of `scores` (B, T, h, w), ranked -> (features (B, N, C), xyt int32 (B, N, 3)).

  ranking: 'xyt' the paper's x + y + tau*t order; 'score' the top-k order (highest first, i.e.
  without ranking); 'random' a fixed permutation of the score order (a control: the sequence
  keeps no spatial or temporal neighbourhood).
  """
  if ranking not in RANKINGS:
    raise ValueError(f"config.model.aknet.ranking: {ranking!r} is not one of {RANKINGS}")
  h, w = scores.shape[2], scores.shape[3]
  idx = select_top_k(scores, n)
  xyt = flat_to_xyt(idx, h, w)
  if ranking == "score":
    return gather_points(features, idx), xyt
  if ranking == "random":
    perm = jnp.broadcast_to(jax.random.permutation(jax.random.PRNGKey(0), n), idx.shape)
  else:
    perm = rank_order(idx, xyt, tau)
  idx = jnp.take_along_axis(idx, perm, axis=1)
  xyt = jnp.take_along_axis(xyt, perm[..., None], axis=1)
  return gather_points(features, idx), xyt

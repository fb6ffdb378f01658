"""TSM temporal shift: part of the channels exchanged with the neighbouring frames, no parameters.

The first 1/shift_div of the channels takes the next frame (t+1), the second 1/shift_div the previous
frame (t-1), the rest stays; frames beyond the clip ends are zeros (TSM `TemporalShift.shift`).
"""

from __future__ import annotations

import jax.numpy as jnp


def temporal_shift(x: jnp.ndarray, num_segments: int, shift_div: int) -> jnp.ndarray:
  """Shifts x (B*T, H, W, C), clip-major (row b*T + t), along time; returns the same shape."""
  n, c = x.shape[0], x.shape[-1]
  if n % num_segments:
    raise ValueError(f"temporal_shift: leading axis {n} is not a multiple of "
                     f"config.dataset.num_segments={num_segments} (devices must hold whole clips)")
  fold = c // shift_div
  x = x.reshape((n // num_segments, num_segments) + x.shape[1:])
  zeros = jnp.zeros_like(x[:, :1, ..., :fold])
  from_next = jnp.concatenate([x[:, 1:, ..., :fold], zeros], axis=1)
  from_prev = jnp.concatenate([zeros, x[:, :-1, ..., fold:2 * fold]], axis=1)
  y = jnp.concatenate([from_next, from_prev, x[..., 2 * fold:]], axis=-1)
  return y.reshape((n,) + y.shape[2:])

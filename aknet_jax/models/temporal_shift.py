"""TSM temporal shift: part of the channels exchanged with the neighbouring frames, no parameters.

The first 1/shift_div of the channels takes the next frame (t+1), the second 1/shift_div the previous
frame (t-1), the rest stays; frames beyond the clip ends are zeros (TSM `TemporalShift.shift`).

Computed as one elementwise select over the input and its two time-shifted copies, run unfused
(`fusion.unfused`): as a channel concatenation XLA:CPU copied the input twice (the slices, then
the concatenate), and an inline select gets fused into the block's residual-add producer and
recomputes it three times. Its gradient is the shift the other way (the transpose of a
permutation with zeros), computed the same way. Off a CPU host the shift is the slices and channel
concatenation and their autodiff, the program that compiled and ran on GPU before the select form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from aknet_jax.models import fusion
from aknet_jax.models import winograd


def _select_shift(x: jnp.ndarray, fold: int, first_from_next: bool) -> jnp.ndarray:
  """x (B, T, ..., C): channels [0, fold) from frame t+1 (t-1 if not first_from_next), channels
  [fold, 2 fold) from the other neighbour, the rest unchanged; zeros past the clip ends."""
  zero = jnp.zeros((), x.dtype)
  rest = [(0, 0, 0)] * (x.ndim - 2)
  from_next = jax.lax.pad(x[:, 1:], zero, [(0, 0, 0), (0, 1, 0)] + rest)
  from_prev = jax.lax.pad(x[:, :-1], zero, [(0, 0, 0), (1, 0, 0)] + rest)
  first, second = (from_next, from_prev) if first_from_next else (from_prev, from_next)
  channel = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.where(channel < fold, first, jnp.where(channel < 2 * fold, second, x))


def _unfused_shift(x, fold, first_from_next):
  return fusion.unfused(
      functools.partial(_select_shift, fold=fold, first_from_next=first_from_next), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _shift(x, fold):
  return _unfused_shift(x, fold, True)


_shift.defvjp(lambda x, fold: (_unfused_shift(x, fold, True), None),
              lambda fold, _, g: (_unfused_shift(g, fold, False),))


def _concatenated_shift(x, fold):
  """The same shift as slices and one channel concatenation (x (B, T, ..., C))."""
  zeros = jnp.zeros_like(x[:, :1, ..., :fold])
  from_next = jnp.concatenate([x[:, 1:, ..., :fold], zeros], axis=1)
  from_prev = jnp.concatenate([zeros, x[:, :-1, ..., fold:2 * fold]], axis=1)
  return jnp.concatenate([from_next, from_prev, x[..., 2 * fold:]], axis=-1)


def temporal_shift(x: jnp.ndarray, num_segments: int, shift_div: int) -> jnp.ndarray:
  """Shifts x (B*T, H, W, C), clip-major (row b*T + t), along time; returns the same shape."""
  n, c = x.shape[0], x.shape[-1]
  if n % num_segments:
    raise ValueError(f"temporal_shift: leading axis {n} is not a multiple of "
                     f"config.dataset.num_segments={num_segments} (devices must hold whole clips)")
  clips = x.reshape((n // num_segments, num_segments) + x.shape[1:])
  y = winograd.cpu_or_default(functools.partial(_shift, fold=c // shift_div),
                              functools.partial(_concatenated_shift, fold=c // shift_div), clips)
  return y.reshape(x.shape)

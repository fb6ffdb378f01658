"""ResNet's stem max-pool (3x3, stride 2, padding 1) with its backward written out.

Autodiff of `nn.max_pool` is XLA's select-and-scatter, which XLA:CPU runs through materialised
index and broadcast arrays of the padded input's size (~100 ms of a TSM-R50 batch-2 step,
docs/benchmarks.md). Here the forward keeps which tap of each window held its first maximum in
row-major order (as select-and-scatter and PyTorch's `max_pool2d` choose among ties), and the
backward scatters with nine strided pads that XLA fuses into one pass. Without a gradient
(inference) the max is the same nine strided taps, one elementwise pass, where XLA:CPU's
reduce-window took 2.5-3x as long (docs/benchmarks.md, "twelfth session"). Off a CPU host the pool
is `nn.max_pool` and its autodiff, the program that compiled and ran on GPU before this one.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from aknet_jax.models import fusion
from aknet_jax.models import winograd

_TAPS = tuple((i, j) for i in range(3) for j in range(3))  # Row-major window order.


def _pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C): max over 3x3 windows, stride 2, -inf pad 1."""
  return winograd.cpu_or_default(_written_out, _pool, x)


@jax.custom_vjp
def _written_out(x):
  return functools.reduce(jnp.maximum, _taps(x))


def _taps(x):
  """The nine (N, ceil(H/2), ceil(W/2), C) strided views of x padded with -inf, in _TAPS order."""
  h, w = x.shape[1:3]
  ho, wo = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2] for i, j in _TAPS]


def _max_and_first(x):
  """(max over each window, int8 index of its first maximum's tap in row-major order)."""
  taps = _taps(x)
  y, first = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for k in range(1, len(_TAPS)):
    later = (taps[k] > y) | (jnp.isnan(taps[k]) & ~jnp.isnan(y))  # Ties keep the first (torch).
    y, first = jnp.where(later, taps[k], y), jnp.where(later, jnp.int8(k), first)
  return y, first


def _fwd(x):
  # The max and the index of its tap from one pass: a backward that re-found the maximum by
  # comparing x with y missed it where XLA recomputed x there with a different rounding. Computed
  # unfused: XLA:CPU otherwise recomputed the nine-tap chain in the backward for every window an
  # input sits in (the stem pool's backward in TDN-R50's batch-2 step: 29.7 ms, 11.5 ms unfused).
  y, first = fusion.unfused(_max_and_first, x)
  return y, (first, x.shape)


def _bwd(residuals, g):
  first, (n, h, w, c) = residuals
  ho, wo = first.shape[1:3]
  hp, wp = h + 2, w + 2
  zero = jnp.zeros((), g.dtype)
  dxp = sum(jax.lax.pad(jnp.where(first == k, g, zero), zero,
                        ((0, 0, 0), (i, hp - i - (2 * ho - 1), 1), (j, wp - j - (2 * wo - 1), 1),
                         (0, 0, 0)))
            for k, (i, j) in enumerate(_TAPS))
  return (dxp[:, 1:-1, 1:-1],)


_written_out.defvjp(_fwd, _bwd)

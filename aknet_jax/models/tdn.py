"""TDN temporal-difference pieces: RGB differences, fusion, the mSE module and the learnable shift.

Follows TDN ops/tdn_net.py and ops/base_module.py (the official TDN code), including its quirks:
nearest resizes use PyTorch's legacy `floor(dst * in / out)` rule, mSE applies its shared BNs twice.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ModuleDef = Any
NUM_FRAMES = 5  # Frames per segment; the centre one (index 2) feeds the RGB stem.


def rgb_differences(frames: jnp.ndarray) -> jnp.ndarray:
  """(N, 5, H, W, 3) -> (N, H, W, 12): [f2-f1, f3-f2, f4-f3, f5-f4] stacked on channels."""
  return jnp.concatenate([frames[:, j + 1] - frames[:, j] for j in range(NUM_FRAMES - 1)], axis=-1)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
  """Source indices of PyTorch `F.interpolate(mode='nearest', size=...)`: floor(dst * in / out)."""
  scale = np.float32(size_in / size_out)
  idx = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(idx, size_in - 1)


def _resize_axis(x: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
  idx = nearest_indices(x.shape[axis], size)
  factor = size // x.shape[axis]
  if size % x.shape[axis] == 0 and np.array_equal(idx, np.arange(size) // factor):
    # An integer upscale repeats each row: a broadcast, whose gradient sums blocks, where a gather
    # is a copy forward and a scatter-add backward on XLA:CPU.
    return jnp.repeat(x, factor, axis=axis)
  return jnp.take(x, idx, axis=axis)


def nearest_resize(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """Nearest resize of (N, h, w, C) to (N, height, width, C) with PyTorch's source indices."""
  return _resize_axis(_resize_axis(x, 1, height), 2, width)


def avg_pool2(x: jnp.ndarray) -> jnp.ndarray:
  """AvgPool2d(2, stride 2), floor mode: an odd last row/column is dropped."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def fusion_weights(num_segments: int) -> tuple[float, float]:
  """(RGB, difference) weights of TDN's fusion: 0.5/0.5 for 8 segments, else 0.75/0.25."""
  return (0.5, 0.5) if num_segments == 8 else (0.75, 0.25)


def fuse(x: jnp.ndarray, diff: jnp.ndarray, num_segments: int) -> jnp.ndarray:
  """alpha * x + beta * (diff nearest-resized to x's spatial size)."""
  alpha, beta = fusion_weights(num_segments)
  return alpha * x + beta * nearest_resize(diff, x.shape[1], x.shape[2]).astype(x.dtype)


def _time_pad(x: jnp.ndarray, at_end: bool) -> jnp.ndarray:
  """Adds one zero step on axis 1 (time) at the end or at the start."""
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, 1) if at_end else (1, 0)
  return jnp.pad(x, pad)


class MSE(nn.Module):
  """Long-term temporal difference module (TDN `mSEModule`): x * (1 + y), y from two multi-scale
  excitations of the forward and backward feature differences."""
  num_segments: int
  conv: ModuleDef
  norm: ModuleDef
  reduction: int = 16

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    r = c // self.reduction
    t = self.num_segments
    conv3x3 = lambda name, **kw: self.conv(r, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                                           name=name, **kw)
    b = self.norm(name="bn1")(self.conv(r, (1, 1), padding="VALID", use_bias=False, name="conv1")(x))
    cb = conv3x3("conv2", feature_group_count=r)(b)
    b5 = b.reshape((n // t, t, h, w, r))
    cb5 = cb.reshape((n // t, t, h, w, r))
    forward = _time_pad(cb5[:, 1:] - b5[:, :-1], at_end=True).reshape((n, h, w, r))
    backward = _time_pad(cb5[:, :-1] - b5[:, 1:], at_end=False).reshape((n, h, w, r))

    conv_s2, bn_s2 = conv3x3("conv3_smallscale2"), self.norm(name="bn3_smallscale2")
    conv_s4, bn_s4 = conv3x3("conv3_smallscale4"), self.norm(name="bn3_smallscale4")
    conv3 = self.conv(c, (1, 1), padding="VALID", use_bias=False, name="conv3")
    bn3 = self.norm(name="bn3")
    # Each shared BN runs on the forward difference first, then on the backward one (as in TDN).
    half = [bn_s2(conv_s2(avg_pool2(z))) for z in (forward, backward)]
    full = [bn_s4(conv_s4(z)) for z in (forward, backward)]
    excite = []
    for z, z2, z4 in zip((forward, backward), half, full):
      z2 = nearest_resize(z2, h, w)
      excite.append(bn3(conv3(1.0 / 3.0 * z + 1.0 / 3.0 * z2 + 1.0 / 3.0 * z4)))
    y = [jax.nn.sigmoid(e) - 0.5 for e in excite]
    y = 0.5 * y[0] + 0.5 * y[1]
    return x + x * y


def shift_kernel_init(shift_div: int) -> Callable:
  """Initialiser of the (3, 1, C) temporal kernel equal to the TSM shift: taps read t-1, t, t+1."""
  def init(key, shape, dtype=jnp.float32):
    del key
    c = shape[-1]
    fold = c // shift_div
    k = np.zeros(shape, np.float32)
    k[2, 0, :fold] = 1.0  # Takes the next frame.
    k[0, 0, fold:2 * fold] = 1.0  # Takes the previous frame.
    k[1, 0, 2 * fold:] = 1.0
    return jnp.asarray(k, dtype)
  return init


class ShiftModule(nn.Module):
  """TDN's learnable shift: a depthwise 3-tap convolution over time, zero-padded, per pixel."""
  num_segments: int
  shift_div: int = 8
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    n, c = x.shape[0], x.shape[-1]
    t = self.num_segments
    kernel = self.param("kernel", shift_kernel_init(self.shift_div), (3, 1, c), jnp.float32)
    kernel = kernel.astype(self.dtype or x.dtype)
    x5 = x.reshape((n // t, t) + x.shape[1:])
    xp = jnp.pad(x5, [(0, 0), (1, 1)] + [(0, 0)] * (x5.ndim - 2))
    y = kernel[0, 0] * xp[:, :t] + kernel[1, 0] * xp[:, 1:t + 1] + kernel[2, 0] * xp[:, 2:t + 2]
    return y.reshape(x.shape)

"""`nn.Conv` whose pointwise (1x1, 1-tap 1D) case, and stride-1 2D convs on tiny grids, run as a
matmul.

XLA:CPU lowers a 1x1 convolution's weight gradient to a generic convolution that runs 1.3-2.8x
slower than the same contraction as `dot_general` (docs/benchmarks.md, per-layer table); the
forward and input gradient gain too. On grids of at most `SMALL_GRID` cells (ResNet's res5 at a
64² input is 2x2) XLA:CPU's 3x3 convolution runs 5-50x slower than im2col + one matmul, forward
and backward; from 7x7 up the two are within ~1.3x either way, so larger grids keep the
convolution. Same variables (`kernel`, `bias`) as `nn.Conv`, so checkpoints and converters are
unchanged; every other kernel is `nn.Conv` itself.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from flax.linen import dtypes


def _is_pointwise(kernel_size, padding) -> bool:
  if any(k != 1 for k in kernel_size):
    return False
  if isinstance(padding, str):  # 'SAME' pads a 1-tap kernel by nothing.
    return padding in ("VALID", "SAME")
  if isinstance(padding, int):
    return padding == 0
  return all(tuple(p) == (0, 0) for p in padding)


SMALL_GRID = 16  # Input cells (H x W) up to which a stride-1 2D conv runs as im2col + matmul.


def _explicit_padding(kernel_size, padding):
  """((lo, hi), ...) per spatial dim, or None where the padding is not a plain zero padding."""
  if isinstance(padding, str):
    if padding == "VALID":
      return tuple((0, 0) for _ in kernel_size)
    if padding == "SAME" and all(k % 2 == 1 for k in kernel_size):
      return tuple((k // 2, k // 2) for k in kernel_size)  # Stride 1, odd kernel: symmetric.
    return None
  if isinstance(padding, int):
    return tuple((padding, padding) for _ in kernel_size)
  pads = tuple(tuple(p) if not isinstance(p, int) else (p, p) for p in padding)
  return pads if len(pads) == len(kernel_size) else None


def _im2col(inputs, kernel, pads):
  """Stride-1 2D convolution of (..., H, W, C_in) by (kh, kw, C_in, C_out) as one matmul over the
  kh*kw shifted copies of the zero-padded input (tap-major, then C_in: the kernel's own order)."""
  kh, kw, cin, cout = kernel.shape
  lead = inputs.ndim - 3
  x = jax.numpy.pad(inputs, ((0, 0),) * lead + (pads[0], pads[1], (0, 0)))
  ho, wo = x.shape[-3] - kh + 1, x.shape[-2] - kw + 1
  taps = [x[..., i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]
  cols = jax.numpy.concatenate(taps, axis=-1)
  return jax.lax.dot_general(cols, kernel.reshape(kh * kw * cin, cout),
                             (((cols.ndim - 1,), (0,)), ((), ())))


def _ones(value) -> bool:
  return value is None or (value == 1 if isinstance(value, int) else all(v == 1 for v in value))


class Conv(nn.Conv):
  """`nn.Conv` (no dilation, groups or masks on the pointwise path); 1x1 kernels as a matmul."""

  @nn.compact
  def __call__(self, inputs):
    kernel_size = tuple(self.kernel_size)
    plain = (self.feature_group_count == 1 and self.mask is None
             and _ones(self.kernel_dilation) and _ones(self.input_dilation))
    if plain and len(kernel_size) == 2 and _ones(self.strides) and inputs.ndim >= 4:
      pads = _explicit_padding(kernel_size, self.padding)
      if pads is not None and inputs.shape[-3] * inputs.shape[-2] <= SMALL_GRID:
        kernel = self.param("kernel", self.kernel_init, kernel_size + (inputs.shape[-1],
                                                                      self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = _im2col(inputs, kernel, pads)
        return y + bias if bias is not None else y
    if not _is_pointwise(kernel_size, self.padding) or not plain:
      return super().__call__(inputs)
    n_spatial = len(kernel_size)
    strides = self.strides if self.strides is not None else 1
    strides = (strides,) * n_spatial if isinstance(strides, int) else tuple(strides)
    kernel = self.param("kernel", self.kernel_init, kernel_size + (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    if any(s != 1 for s in strides):
      # A strided 1x1 conv reads every s-th position: slice first, then contract.
      batch = (slice(None),) * (inputs.ndim - n_spatial - 1)
      inputs = inputs[batch + tuple(slice(None, None, s) for s in strides) + (slice(None),)]
    y = jax.lax.dot_general(inputs, kernel.reshape(kernel.shape[-2:]),
                            (((inputs.ndim - 1,), (0,)), ((), ())),
                            precision=self.precision)
    if bias is not None:
      y = y + bias
    return y

"""`nn.Conv` whose pointwise (1x1, 1-tap 1D) case runs as a matmul, and large 3x3 ones as Winograd.

XLA:CPU lowers a 1x1 convolution's weight gradient to a generic convolution that runs 1.3-2.8x
slower than the same contraction as `dot_general` (docs/benchmarks.md, per-layer table); the
forward and input gradient gain too. Its backward is written out (`_pointwise_bwd`); the weight
gradient (`weight_gradient`) transposes its narrower operand first where YNNPACK then runs the
matmul faster than Eigen runs it in place. Stride-1 3x3 convs with enough channels and tiles run as
Winograd F(2x2, 3x3) on CPU (`models/winograd.py`), and on small grids (<= 16 cells, or up to
7x7 with <= 1024 output positions) as im2col matmuls; strided 3x3 ones keep XLA's kernels except
for the weight gradient, one im2col matmul on CPU (`_im2col_3x3_bwd`), and from 512 input
channels their forward and input gradient, matmuls
over the same patches. Depthwise 3x3 convs, which XLA:CPU runs as a slow grouped convolution, are
nine shifted multiply-adds on CPU (`_depthwise_shifted`). Same variables (`kernel`
(kh, .., C_in, C_out), `bias`) as `nn.Conv`, so checkpoints and converters are unchanged; every
other kernel is `nn.Conv` itself.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

from aknet_jax.models import fusion
from aknet_jax.models import winograd


def _is_pointwise(kernel_size, padding) -> bool:
  if any(k != 1 for k in kernel_size):
    return False
  if isinstance(padding, str):  # 'SAME' pads a 1-tap kernel by nothing.
    return padding in ("VALID", "SAME")
  if isinstance(padding, int):
    return padding == 0
  return all(tuple(p) == (0, 0) for p in padding)


def _is_3x3_same(kernel_size, padding) -> bool:
  if tuple(kernel_size) != (3, 3):
    return False
  if isinstance(padding, str):
    return padding == "SAME"
  if isinstance(padding, int):
    return padding == 1
  return all(tuple(p) == (1, 1) for p in padding)


def _pairs(padding) -> tuple:
  """An int or per-dimension padding as ((lo, hi), ...) for two spatial dimensions."""
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple(tuple(p) for p in padding)


def _ones(value) -> bool:
  return value is None or (value == 1 if isinstance(value, int) else all(v == 1 for v in value))


def _matmul(x, w, b, precision):
  """x (..., C_in) @ w (C_in, C_out) (+ b (C_out,))."""
  y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
  return y if b is None else y + b


def _pointwise(x, w, b, precision):
  """`_matmul` with its backward written out on CPU; autodiff's elsewhere (as on GPU before)."""
  return winograd.cpu_or_default(lambda x, w, b: _written_out(x, w, b, precision),
                                 lambda x, w, b: _matmul(x, w, b, precision), x, w, b)


_written_out = jax.custom_vjp(_matmul, nondiff_argnums=(3,))


def _pointwise_fwd(x, w, b, precision):
  return _matmul(x, w, b, precision), (x, w, b)


def _pointwise_bwd(precision, residuals, g):
  x, w, b = residuals
  g2 = g.reshape(-1, g.shape[-1])
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  return dx, weight_gradient(x.reshape(-1, x.shape[-1]), g2, precision), _bias_grad(g2, b)


_written_out.defvjp(_pointwise_fwd, _pointwise_bwd)


# A weight gradient x^T g transposes its narrower operand into a buffer of its own first when that
# operand has at least this many columns (g: the output side; x: the input side, where at 64 the
# in-place form wins): XLA:CPU hands the resulting row-major matmul to YNNPACK, while x^T g with
# both operands contracted on their row axis runs on Eigen. ResNet-50's 1x1 and im2col weight
# gradients at 16 frames take 0.59-0.93x the time with the copy (docs/benchmarks.md, "tenth
# session"); Winograd's batched ones (16 small matmuls) do not gain and stay in place.
WGRAD_TRANSPOSE_MIN_G_COLUMNS, WGRAD_TRANSPOSE_MIN_X_COLUMNS = 64, 128


def weight_gradient(x2, g2, precision=None):
  """x2 (R, C_in)^T @ g2 (R, C_out) -> (C_in, C_out): a matmul's weight gradient.

  On CPU, in float32, the narrower operand is transposed first (in a computation of its own:
  fused into its producer, the transpose is a strided write that costs more than it saves).
  """
  in_place = lambda x2, g2: jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())),
                                                 precision=precision)
  cx, cg = x2.shape[-1], g2.shape[-1]
  nn_dot = lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision)
  transpose = lambda a: fusion.unfused(jnp.transpose, a)
  if x2.dtype != jnp.float32:
    return in_place(x2, g2)
  if WGRAD_TRANSPOSE_MIN_G_COLUMNS <= cg <= cx:
    cpu = lambda x2, g2: transpose(nn_dot(transpose(g2), x2))
  elif WGRAD_TRANSPOSE_MIN_X_COLUMNS <= cx < cg:
    cpu = lambda x2, g2: nn_dot(transpose(x2), g2)
  else:
    return in_place(x2, g2)
  return winograd.cpu_or_default(cpu, in_place, x2, g2)


def _bias_grad(g2, b):
  """The bias gradient from g's (rows, C_out) view, or None for a conv without bias."""
  return None if b is None else winograd.sum_rows(g2).astype(b.dtype)


# Strided 3x3 convs from this many input channels take `_im2col_3x3` (ResNet-50's res3-res5
# first blocks; measured there, docs/benchmarks.md).
STRIDED_MIN_CHANNELS = 64
# From this many input channels (res5's first block, AK-Net's auxiliary head) the strided conv's
# forward and input gradient are im2col matmuls too: XLA:CPU's strided kernels run slower there
# (docs/benchmarks.md; 16 frames of 14x14x512: forward 23 -> 19 ms, input gradient 24 -> 18 ms).
IM2COL_MIN_CHANNELS = 512
# Stride-1 3x3 convs on grids of at most this many cells (the synthetic ResNet-18's res4 and res5
# at 64^2 input: 4x4 and 2x2) run all of it as im2col matmuls on CPU, in float32 where Winograd
# does not apply. XLA:CPU's kernel is 5-50x slower at 2x2; at 4x4 its forward ties and the
# gradients take 1.5x as long (docs/benchmarks.md, "Small grids").
SMALL_GRID_MAX_CELLS = 16
# So do those on grids up to 7x7 with at most this many output positions in all (ResNet-50's res5
# at 8 or 16 frames: 392, 784 rows). Measured on a Zen 5 EPYC (docs/benchmarks.md, "ninth
# session"): 0.68-0.79x XLA's forward and 0.57-0.90x its gradients at 8-20 frames of 7x7x512 and
# 7x7x208; at 32 frames (1568 rows) XLA's forward is faster.
SMALL_GRID_MAX_ROWS, SMALL_GRID_MAX_SIDE = 1024, 7


def _patches(x, window, strides, padding, out_hw):
  """The strided taps of x side by side: (rows, kh*kw*C), a matmul operand read row-wise."""
  (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  xp = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
  taps = [xp[:, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw]
          for u in range(kh) for v in range(kw)]
  return jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * x.shape[-1])


def _out_hw(x, w, strides, padding):
  """(oh, ow) of a conv of NHWC x by HWIO w with these strides and explicit padding."""
  return tuple((x.shape[1 + i] + sum(padding[i]) - w.shape[i]) // strides[i] + 1 for i in (0, 1))


def _im2col_forward(x, w, b, strides, padding, precision, matmuls):
  """One matmul over the patches (+ b) if `matmuls`, else XLA's conv."""
  if not matmuls:
    return winograd.direct(x, w, strides, padding, precision, b)
  oh, ow = _out_hw(x, w, strides, padding)
  patches = _patches(x, w.shape[:2], strides, padding, (oh, ow))
  y = jax.lax.dot_general(patches, w.reshape(-1, w.shape[-1]), (((1,), (0,)), ((), ())),
                          precision=precision).reshape(x.shape[0], oh, ow, w.shape[-1])
  return y if b is None else y + b


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _im2col_3x3(x, w, b, strides, padding, precision, matmuls):
  """A 3x3 conv whose weight gradient is one im2col matmul that reads x in place; with `matmuls`
  its forward and input gradient are matmuls over the same patches too, else XLA's kernels."""
  return _im2col_forward(x, w, b, strides, padding, precision, matmuls)


def _im2col_3x3_fwd(x, w, b, strides, padding, precision, matmuls):
  return _im2col_forward(x, w, b, strides, padding, precision, matmuls), (x, w, b)


def _im2col_3x3_bwd(strides, padding, precision, matmuls, residuals, g):
  # XLA:CPU's weight-gradient kernel reads x channel-major: a transposed copy that recomputes x's
  # fused producers with strided reads (TDN: conv1 -> BN -> ReLU -> mSE -> shift, 187 ms at res3
  # for 2 clips; AK-Net's auxiliary head: 184 ms). The taps side by side are read row-wise.
  x, w, b = residuals
  patches = lambda x: _patches(x, w.shape[:2], strides, padding, g.shape[1:3])
  g2 = g.reshape(-1, g.shape[-1])
  dw = weight_gradient(patches(x), g2, precision)
  if matmuls:
    # g @ w^T gives each tap's input gradient; the taps' transpose adds them back in place.
    d_patches = jax.lax.dot_general(g2, w.reshape(-1, w.shape[-1]), (((1,), (1,)), ((), ())),
                                    precision=precision)
    dx = jax.vjp(patches, x)[1](d_patches)[0]
  else:
    dx = jax.vjp(lambda x: winograd.direct(x, w, strides, padding, precision), x)[1](g)[0]
  return dx, dw.reshape(w.shape), _bias_grad(g2, b)


_im2col_3x3.defvjp(_im2col_3x3_fwd, _im2col_3x3_bwd)


def _im2col_conv(x, w, b, strides, padding, precision, matmuls):
  """`_im2col_3x3` on CPU; XLA's conv and its own gradients elsewhere and in `direct_form`."""
  xla = lambda x, w, b: winograd.direct(x, w, strides, padding, precision, b)
  cpu = lambda x, w, b: _im2col_3x3(x, w, b, strides, padding, precision, matmuls)
  return winograd.cpu_or_default(cpu, xla, x, w, b)


def _depthwise_shifted(x, w, b):
  """A depthwise 3x3 pad-1 conv (w: (3, 3, 1, C)) as nine shifted multiply-adds, which XLA fuses
  into one pass (and autodiff into one pass per gradient)."""
  h, wd = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = sum(xp[:, u:u + h, v:v + wd] * w[u, v, 0] for u in range(3) for v in range(3))
  return y if b is None else y + b


def _depthwise_conv(x, w, b, precision):
  """`_depthwise_shifted` on CPU; XLA's grouped conv elsewhere and in `direct_form`."""
  xla = lambda x, w, b: winograd.direct(x, w, precision=precision, bias=b, groups=x.shape[-1])
  return winograd.cpu_or_default(_depthwise_shifted, xla, x, w, b)


class Conv(nn.Conv):
  """`nn.Conv`; 1x1 kernels as a matmul, 3x3 stride-1 ones as Winograd (on small grids as im2col
  matmuls), strided 3x3 ones via im2col (the weight gradient; from 512 channels all of it) and
  depthwise 3x3 ones as shifted multiply-adds on CPU (no dilation or masks on these paths, and
  groups only on the depthwise one)."""

  @nn.compact
  def __call__(self, inputs):
    kernel_size = tuple(self.kernel_size)
    n_spatial = len(kernel_size)
    strides = self.strides if self.strides is not None else 1
    strides = (strides,) * n_spatial if isinstance(strides, int) else tuple(strides)
    plain = (self.feature_group_count == 1 and self.mask is None and _ones(self.kernel_dilation)
             and _ones(self.input_dilation))
    winograd_3x3 = (plain and _is_3x3_same(kernel_size, self.padding) and _ones(strides)
                    and winograd.applies(inputs.shape, self.features,
                                         self.dtype or inputs.dtype))
    strided_3x3 = (plain and _is_3x3_same(kernel_size, self.padding) and not _ones(strides)
                   and not isinstance(self.padding, str) and inputs.ndim == 4
                   and inputs.shape[-1] >= STRIDED_MIN_CHANNELS)
    depthwise_3x3 = (self.mask is None and _ones(self.kernel_dilation)
                     and _ones(self.input_dilation)
                     and _is_3x3_same(kernel_size, self.padding) and _ones(strides)
                     and inputs.ndim == 4 and self.feature_group_count > 1
                     and self.feature_group_count == inputs.shape[-1] == self.features)
    small_3x3 = (plain and _is_3x3_same(kernel_size, self.padding) and _ones(strides)
                 and not winograd_3x3 and inputs.ndim == 4
                 and (inputs.shape[1] * inputs.shape[2] <= SMALL_GRID_MAX_CELLS
                      or (max(inputs.shape[1:3]) <= SMALL_GRID_MAX_SIDE
                          and math.prod(inputs.shape[:3]) <= SMALL_GRID_MAX_ROWS))
                 and jnp.dtype(self.dtype or inputs.dtype) == jnp.float32)
    if not (winograd_3x3 or strided_3x3 or small_3x3 or depthwise_3x3
            or (plain and _is_pointwise(kernel_size, self.padding))):
      return super().__call__(inputs)
    in_per_group = inputs.shape[-1] // self.feature_group_count
    kernel = self.param("kernel", self.kernel_init, kernel_size + (in_per_group, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    # The bias goes inside each path: its gradient is then a matvec over the operand the weight
    # gradient reads (`winograd.sum_rows`).
    if depthwise_3x3:
      return _depthwise_conv(inputs, kernel, bias, self.precision)
    if winograd_3x3:
      return winograd.conv3x3(inputs, kernel, bias, self.precision)
    if strided_3x3:
      return _im2col_conv(inputs, kernel, bias, strides, _pairs(self.padding), self.precision,
                          inputs.shape[-1] >= IM2COL_MIN_CHANNELS)
    if small_3x3:  # Stride 1: 'SAME' pads a 3x3 kernel by one on each side.
      return _im2col_conv(inputs, kernel, bias, (1, 1), ((1, 1), (1, 1)), self.precision, True)
    if any(s != 1 for s in strides):
      # A strided 1x1 conv reads every s-th position: slice first, then contract.
      batch = (slice(None),) * (inputs.ndim - n_spatial - 1)
      inputs = inputs[batch + tuple(slice(None, None, s) for s in strides) + (slice(None),)]
    return _pointwise(inputs, kernel.reshape(kernel.shape[-2:]), bias, self.precision)

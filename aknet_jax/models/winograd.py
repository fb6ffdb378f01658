"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3) on CPU: 16 batched matmuls instead of 9 taps.

Each 4x4 input tile (stride 2) and the 3x3 kernel are mapped by fixed 0/±1/±½ transforms (Lavin &
Gray 2016) so that one elementwise product per tile position gives a 2x2 output tile: 2.25x fewer
multiplies than direct convolution, as matmuls over the channels. XLA:CPU's own 3x3 kernels run
1.3-1.6x slower than oneDNN's per layer (docs/benchmarks.md); this form runs ResNet-50's stride-1
3x3 layers in 0.5-0.9x of XLA's time, forward and backward, where it applies. The backward is
written out: the input gradient is the same transform applied to g with the flipped kernel, and
the weight gradient contracts the transformed input and output gradient over tiles, in place.
Narrow layers (24-63 channels, TEA's Res2Net splits) run only their forward this way.
Other platforms run `lax.conv_general_dilated` unchanged (cuDNN and the TPU pick their own
algorithms).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp

# The kernel transform G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]], the input
# transform B^T and the output transform A^T are written out below as the sums they are.

# Below these sizes XLA:CPU's direct kernel wins or ties (`python -m aknet_jax.conv_bench`,
# docs/benchmarks.md): with 16-32 channels the 16 matmuls are too thin; with fewer than 512 tiles,
# too short. At 784 tiles (16 frames at 14x14, res4 of a 2-clip training step) Winograd's forward
# + backward is 45 ms against 58.
MIN_CHANNELS = 64
MIN_TILES = 512
# From 256 channels, 392 tiles suffice (8 frames at 14x14: res4 of one clip, batch-1 inference):
# forward 0.66-0.80x XLA's, forward + backward 0.88-0.94x on the Zen 5 host (a tie on the sixth
# session's host). At 104-128 channels 392 tiles tie or lose (forward 0.92-1.07x), and 196 tiles
# at 256 lose (forward + backward 1.13x).
WIDE_CHANNELS = 256
WIDE_MIN_TILES = 392
# Narrower layers from THIN_MIN_TILES tiles, where XLA's kernel runs them slowly: TEA's Res2Net
# splits (26 channels at 56x56, 52 at 28x28) forward in 0.66-0.75x of its time (their backward
# stays XLA's, `conv3x3`). At multiples of 32 channels XLA's kernel ties or wins (56x56x32,
# 16 frames: Winograd 1.05x forward, 1.23x forward + backward).
THIN_MIN_CHANNELS = 24
THIN_MIN_TILES = 1568
# Up to this many channels (ResNet-50's res2) the weight gradient is XLA's convolution, not
# Winograd's 16 matmuls contracted over the tiles (C x K = 64 x 64 each), which in a training
# step's op profile take 2-3x their time alone. TSM-R50 step 0.977x, TDN 0.947x
# (docs/benchmarks.md, "tenth session"); at 128 channels no gain (1.005x).
DIRECT_WGRAD_MAX_CHANNELS = 64

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
_DIRECT = contextvars.ContextVar("aknet_winograd_direct", default=False)
_PLATFORMS = contextvars.ContextVar("aknet_lowering_platforms", default=None)


@contextlib.contextmanager
def direct_form():
  """Functions traced inside use XLA's convolution everywhere (Winograd here, and `models/conv`'s
  strided weight gradient): MAC counts (`models.gmacs`) count the convolution as defined, not the
  2.25x fewer multiplies Winograd does on CPU."""
  token = _DIRECT.set(True)
  try:
    yield
  finally:
    _DIRECT.reset(token)


def in_direct_form() -> bool:
  """Whether the caller is tracing inside `direct_form()`."""
  return _DIRECT.get()


@contextlib.contextmanager
def lowering_for(platforms):
  """Functions traced inside are lowered for `platforms` (e.g. an export for CPU and CUDA from one
  host): `cpu_or_default` then lets the lowering choose per platform."""
  token = _PLATFORMS.set(tuple(platforms))
  try:
    yield
  finally:
    _PLATFORMS.reset(token)


def cpu_only() -> bool:
  """Whether functions traced now are lowered for CPU alone (a plain `jit` on a CPU host, not in
  `direct_form`): where a CPU-only formulation may replace the plain one outright."""
  return not in_direct_form() and tuple(_PLATFORMS.get() or (jax.default_backend(),)) == ("cpu",)


def cpu_or_default(cpu, default, *args):
  """cpu(*args) in a program for CPU; default(*args) elsewhere and in `direct_form()`.

  An ordinary `jit` lowers for the default backend: on a CPU host only cpu is traced, off one only
  default (`platform_dependent` would trace and differentiate both, and off CPU lower every branch
  into the program). Inside `lowering_for` several platforms, `platform_dependent` chooses.
  """
  platforms = _PLATFORMS.get() or (jax.default_backend(),)
  if in_direct_form() or "cpu" not in platforms:
    return default(*args)
  if len(platforms) == 1:
    return cpu(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)


def direct(x, w, strides=(1, 1), padding=((1, 1), (1, 1)), precision=None, bias=None,
           groups=1):
  """XLA's own NHWC / HWIO convolution (+ bias): what the reformulations replace, and run
  elsewhere."""
  y = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DIMENSION_NUMBERS,
                                   feature_group_count=groups, precision=precision)
  return y if bias is None else y + bias


def applies(input_shape, features: int, dtype) -> bool:
  """Whether a 3x3, stride-1, pad-1 conv of this NHWC input runs as Winograd on CPU."""
  if len(input_shape) != 4 or jnp.dtype(dtype) != jnp.float32:
    return False
  n, h, w, c = input_shape
  if h % 2 or w % 2:
    return False
  narrow, tiles = min(c, features), n * h * w // 4
  if narrow >= MIN_CHANNELS:
    return tiles >= (WIDE_MIN_TILES if narrow >= WIDE_CHANNELS else MIN_TILES)
  return narrow >= THIN_MIN_CHANNELS and narrow % 32 != 0 and tiles >= THIN_MIN_TILES


def _g_rows(r0, r1, r2):
  """G applied along one axis: three slices -> four, (r0, (r0+r1+r2)/2, (r0-r1+r2)/2, r2)."""
  half = 0.5 * (r0 + r2)
  return r0, half + 0.5 * r1, half - 0.5 * r1, r2


def _gt_rows(d0, d1, d2, d3):
  """G^T applied along one axis: four slices -> three."""
  half = 0.5 * (d1 + d2)
  return d0 + half, 0.5 * (d1 - d2), half + d3


def kernel_transform(w):
  """G w G^T of a (3, 3, C, K) kernel: (4, 4, C, K). As sums of the nine (C, K) slices: as an
  einsum XLA:CPU ran it as matmuls with 3-4 columns, 17-29x slower (4.9-8.2 against 0.28 ms at
  256 x 256 channels; docs/benchmarks.md, "tenth session")."""
  rows = _g_rows(w[0], w[1], w[2])
  return jnp.stack([jnp.stack(_g_rows(r[0], r[1], r[2])) for r in rows])


def kernel_transform_transpose(du):
  """G^T du G of a (4, 4, C, K) gradient: (3, 3, C, K), the kernel transform's transpose."""
  rows = _gt_rows(du[0], du[1], du[2], du[3])
  return jnp.stack([jnp.stack(_gt_rows(r[0], r[1], r[2], r[3])) for r in rows])


def _input_tiles(x):
  """(N, H, W, C), H and W even -> B^T d B of every 4x4 tile at stride 2, as 16 (N*H/2*W/2, C)
  arrays, one per tile position (row-major). Kept apart, each feeds its own matmul: stacked into
  one (16, tiles, C) operand, XLA:CPU wrote the 16 parts and then copied them into the stack
  (1.1 ms of 6.5 per res2 layer at one clip; docs/benchmarks.md, "thirteenth session")."""
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  r = [xp[:, a:a + h:2] for a in range(4)]  # Tile row a of every tile: (N, TY, W + 2, C).
  rows = (r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])
  tiles = []
  for v in rows:
    col = [v[:, :, b:b + w:2] for b in range(4)]
    tiles += [col[0] - col[2], col[1] + col[2], col[2] - col[1], col[1] - col[3]]
  return [t.reshape(-1, c) for t in tiles]


def _matmul(a, b, precision, contract=((1,), (0,))):
  """A 2D dot_general contracting `contract` (a's rows times b by default)."""
  return jax.lax.dot_general(a, b, (contract, ((), ())), precision=precision)


def sum_rows(m):
  """(R, K) -> (K,) float32: the sum over rows as a matvec with ones.

  A conv's bias gradient. Read by a dot, like the weight gradient reads the same (R, K) operand,
  XLA:CPU computes that operand once; a reduce over the NHWC view made it fuse BN's backward into
  a second copy of the operand (TDN-R50 step 0.98x, docs/benchmarks.md)."""
  return jax.lax.dot_general(jnp.ones((m.shape[0],), m.dtype), m, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _forward(x, w, precision):
  n, h, wd, _ = x.shape
  k = w.shape[-1]
  u = kernel_transform(w)
  m = [_matmul(t, u[i // 4, i % 4], precision).reshape(n, h // 2, wd // 2, k)
       for i, t in enumerate(_input_tiles(x))]
  m = [m[4 * i:4 * i + 4] for i in range(4)]  # m[row][column] of the 4x4 tile positions.
  # A^T m A: rows (m0 + m1 + m2, m1 - m2 - m3), then the same over columns.
  o = ([a + b + c for a, b, c in zip(m[0], m[1], m[2])],
       [b - c - d for b, c, d in zip(m[1], m[2], m[3])])
  y = [jnp.stack((oi[0] + oi[1] + oi[2], oi[1] - oi[2] - oi[3]), axis=3) for oi in o]
  return jnp.stack(y, axis=2).reshape(n, h, wd, k)  # (N, TY, 2, TX, 2, K) interleaved.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _winograd(x, w, b, precision, direct_backward=False):
  y = _forward(x, w, precision)
  return y if b is None else y + b


def _winograd_fwd(x, w, b, precision, direct_backward=False):
  # Same residuals as a direct conv: x, not its tiles.
  return _winograd(x, w, b, precision, direct_backward), (x, w, b)


def _winograd_bwd(precision, direct_backward, residuals, g):
  x, w, b = residuals
  n, h, wd, _ = x.shape
  k = w.shape[-1]
  if direct_backward:
    dx = jax.vjp(lambda x: direct(x, w, precision=precision), x)[1](g)[0]
  else:
    # A stride-1 'same' 3x3 conv's input gradient is the same conv of g with the kernel flipped
    # in space and its channel axes swapped.
    dx = _forward(g, jnp.flip(w, (0, 1)).swapaxes(2, 3), precision)
  if direct_backward or max(x.shape[-1], k) <= DIRECT_WGRAD_MAX_CHANNELS:
    dw = jax.vjp(lambda w: direct(x, w, precision=precision), w)[1](g)[0]
    return dx, dw, None if b is None else sum_rows(g.reshape(-1, k)).astype(b.dtype)
  # The output transform's transpose, A g A^T per 2x2 tile of g: 16 (tiles, K) arrays.
  g0, g1 = g[:, 0::2], g[:, 1::2]
  dm = []
  for row in (g0, g0 + g1, g0 - g1, -g1):
    c0, c1 = row[:, :, 0::2], row[:, :, 1::2]
    dm += [c.reshape(-1, k) for c in (c0, c0 + c1, c0 - c1, -c1)]
  du = jnp.stack([_matmul(t, d, precision, ((0,), (0,)))
                  for t, d in zip(_input_tiles(x), dm)]).reshape(4, 4, -1, k)
  dw = kernel_transform_transpose(du)
  # dm[5] = (g0 + g1) over columns c0 + c1: each 2x2 tile's sum, so its rows sum to g's.
  db = None if b is None else sum_rows(dm[5]).astype(b.dtype)
  return dx, dw, db


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


def conv3x3(x, w, b=None, precision=None):
  """x (N, H, W, C) * w (3, 3, C, K) (+ b (K,)), stride 1, padding 1: Winograd on CPU, XLA's conv
  elsewhere."""
  xla = lambda x, w, b: direct(x, w, precision=precision, bias=b)
  # Narrow layers: Winograd's weight gradient (a contraction over tiles into C x K = 26 x 26
  # per tile position) runs slower than XLA's in a training step, so only the forward is.
  thin = min(x.shape[-1], w.shape[-1]) < MIN_CHANNELS
  return cpu_or_default(lambda x, w, b: _winograd(x, w, b, precision, thin), xla, x, w, b)

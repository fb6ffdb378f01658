"""TEA (Temporal Excitation and Aggregation, Li et al. CVPR 2020) on a Res2Net-50 bottleneck.

Follows the official code (Phoenix1327/tea-action-recognition, ops/tea50_8f.py) where it differs
from the paper: the block is Res2Net-50 26w x 4s (conv1 gives 4 splits of floor(planes * 26 / 64)
channels); the motion excitation (ME, reduction 16) follows relu(bn1(conv1(x))); each split gets a
depthwise 3-tap temporal conv (the first three initialised to identity, the last to a half/half
shift) before its 3x3 conv; the first block of a stage is Res2Net's 'stage' variant (no
hierarchical sum, the last split avg-pooled 3x3 instead of passed through). The official temporal
conv covers 2 * (width // 2) channels and so needs an even split width; ours covers all of them
(the same for even widths, as at base width 64), and ME keeps at least one channel (the
official c // 16 leaves none at base widths under 16).

In AK-Net's Q (`Res2Bottleneck1D`) the split structure stays, with every 3x3 conv as a kernel-3 1D
conv, so compaction copies conv1, the split convs, conv3 and their BNs; ME and the temporal convs
are dropped, as TSM's shift and TDN's modules are: they mix one pixel across frames, which Q's
ranked points do not keep (at init the first three temporal convs are the identity).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from aknet_jax.models import batch_norm
from aknet_jax.models import tdn
from aknet_jax.models import winograd

ModuleDef = Any
SCALE = 4  # Res2Net splits per block (26w x 4s).
BASE_WIDTH = 26
REDUCTION = 16  # ME's channel reduction.


def split_width(planes: int) -> int:
  """Channels of one split: floor(planes * 26 / 64) (26 at planes 64)."""
  return int(math.floor(planes * (BASE_WIDTH / 64.0)))


def mid_width(planes: int) -> int:
  """conv1's output channels: SCALE splits (104 at planes 64, where ResNet-50 has 64)."""
  return split_width(planes) * SCALE


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.zeros(shape, dtype).at[1].set(1.0)  # (3, 1, C): the centre tap reads frame t.


class TemporalConv(nn.Module):
  """Depthwise 3-tap conv over time per pixel, zero-padded (TEA's `ShiftModule`, kernel (3, 1, C)):
  mode 'fixed' starts as the identity, 'shift' as TSM's shift of 1/2 + 1/2 of the channels."""
  num_segments: int
  mode: str = "fixed"

  @nn.compact
  def __call__(self, x):
    n, c = x.shape[0], x.shape[-1]
    t = self.num_segments
    init = _identity_init if self.mode == "fixed" else tdn.shift_kernel_init(2)
    kernel = self.param("kernel", init, (3, 1, c), jnp.float32).astype(x.dtype)
    x5 = x.reshape((n // t, t) + x.shape[1:])
    xp = jnp.pad(x5, [(0, 0), (1, 1)] + [(0, 0)] * (x5.ndim - 2))
    y = kernel[0, 0] * xp[:, :t] + kernel[1, 0] * xp[:, 1:t + 1] + kernel[2, 0] * xp[:, 2:t + 2]
    return y.reshape(x.shape)


class MotionExcitation(nn.Module):
  """TEA's ME: x * (1 + sigmoid(bn3(conv3(pool(conv2(b)[t+1] - b[t])))) - 0.5), b = bn1(conv1(x));
  the last frame's difference is zero."""
  num_segments: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    n, c = x.shape[0], x.shape[-1]
    r, t = max(1, c // REDUCTION), self.num_segments  # max: >= 1 channel at widths under 16.
    conv1 = self.conv(r, (1, 1), padding="VALID", use_bias=False, name="conv1")
    bn1 = self.norm(name="bn1")
    conv2 = self.conv(r, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=r, use_bias=False,
                      name="conv2")
    # ME uses only the spatial mean of conv2(b). With zero padding one pixel wide, conv2's centre
    # output on a 3x3 grid is sum_uv k[u, v] z[u, v], so conv2 on the means of b's nine tap
    # windows gives that mean without the depthwise conv at full resolution (which XLA:CPU ran
    # at ~8 % of TEA's batch-1 time for next to no MACs).
    if _affine(bn1):
      means = affine_window_means(x, conv1, bn1)
    else:
      means = window_means(bn1(conv1(x)))
    dtype = bn1.dtype or x.dtype  # b's.
    cb = conv2(means.astype(dtype))[:, 1, 1].astype(jnp.float32).reshape((n // t, t, r))
    mb = means[:, 1, 1].reshape((n // t, t, r))
    y = jnp.pad(cb[:, 1:] - mb[:, :-1], [(0, 0), (0, 1), (0, 0)]).reshape((n, 1, 1, r))
    y = self.norm(name="bn3")(self.conv(c, (1, 1), padding="VALID", use_bias=False,
                                        name="conv3")(y.astype(dtype)))
    return x + x * (jax.nn.sigmoid(y) - 0.5)


def _affine(bn) -> bool:
  """Whether `bn` applies its running statistics (inference, `batch_norm.frozen_affine`), outside
  MAC counting (which counts ME's conv1 at full resolution, as defined)."""
  return not winograd.in_direct_form() and batch_norm.frozen_affine(bn) is not None


def affine_window_means(x, conv1, bn1) -> jnp.ndarray:
  """window_means(bn1(conv1(x))) for a 1x1 conv1 and an inference-mode bn1 (y = a z + c): conv1
  and bn1 on the window means of x. The means are linear in b, but a window of the map's
  interior covers less than H * W (the divisor), so c enters with its window's share. conv1 at
  full resolution (C -> C / 16, a thin matmul XLA:CPU ran at ~25 GMAC/s) took 9 ms of TEA's
  batch 1: TEA 0.986x at batch 1, 0.977x at batch 8 (docs/benchmarks.md, fourteenth session)."""
  h, w = x.shape[1:3]
  means = conv1(window_means(x).astype(x.dtype))  # (N, 3, 3, r)
  c = bn1(jnp.zeros((1, 1, 1, means.shape[-1]), means.dtype)).astype(jnp.float32)
  share = jnp.asarray([[(h - (u != 1)) * (w - (v != 1)) / (h * w) for v in range(3)]
                       for u in range(3)], jnp.float32)[None, :, :, None]
  return bn1(means).astype(jnp.float32) - c * (1.0 - share)


def window_means(b: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, 3, 3, C) float32: at [u, v], the sum over the rows and columns a 3x3,
  pad-1 conv's tap (u, v) reads, over H * W. Tap u = 0 misses the last row, u = 2 the first (v
  the same for columns), so each window is the whole map less one border row and/or column."""
  h, w = b.shape[1:3]
  b = b.astype(jnp.float32)
  rows = b.sum(axis=2)  # (N, H, C): all columns.
  cols = jnp.stack([rows - b[:, :, -1], rows, rows - b[:, :, 0]], axis=2)  # (N, H, 3, C)
  total = cols.sum(axis=1)
  return jnp.stack([total - cols[:, -1], total, total - cols[:, 0]], axis=1) / (h * w)


def _is_first(block) -> bool:
  """Res2Net's 'stage' variant is each stage's first block (resnet.stage names them `layerL_0`)."""
  return block.strides != 1 or (block.name or "").endswith("_0")


def middle(block, h):
  """ME, then the 4-split hierarchical temporal + 3x3 spatial convs (MTA): replaces conv2/bn2/ReLU
  of `resnet.Bottleneck`, whose conv1 gives `mid_width(planes)` channels for TEA."""
  width, s, t = split_width(block.planes), block.strides, block.num_segments
  first = _is_first(block)
  h = MotionExcitation(t, block.conv, block.norm, name="me")(h)
  splits = [h[..., i * width:(i + 1) * width] for i in range(SCALE)]
  outs, sp = [], None
  for i in range(SCALE - 1):
    sp = splits[i] if i == 0 or first else sp + splits[i]
    sp = TemporalConv(t, "fixed", name=f"shifts_{i}")(sp)
    sp = block.conv(width, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False,
                    name=f"convs_{i}")(sp)
    sp = nn.relu(block.norm(name=f"bns_{i}")(sp))
    outs.append(sp)
  last = TemporalConv(t, "shift", name=f"shifts_{SCALE - 1}")(splits[-1])
  if first:  # AvgPool2d(3, stride, padding 1), zeros counted (torch's count_include_pad).
    last = nn.avg_pool(last, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))
  return jnp.concatenate(outs + [last], axis=-1)


class Res2Bottleneck1D(nn.Module):
  """TEA's block in Q over points (B, N, C): the Res2Net splits with kernel-3 1D convs, no ME or
  temporal convs (stride on the split convs and the shortcut, as the 2D block)."""
  planes: int
  strides: int
  conv: Callable[..., Any]
  norm: Callable[..., Any]

  @nn.compact
  def __call__(self, x):
    out, width, s = self.planes * 4, split_width(self.planes), self.strides
    first = s != 1 or x.shape[-1] != out  # The block with a downsample: a stage's first one.
    y = nn.relu(self.norm(name="bn1")(self.conv(width * SCALE, (1,), 1, name="conv1")(x)))
    splits = [y[..., i * width:(i + 1) * width] for i in range(SCALE)]
    outs, sp = [], None
    for i in range(SCALE - 1):
      sp = splits[i] if i == 0 or first else sp + splits[i]
      sp = nn.relu(self.norm(name=f"bns_{i}")(self.conv(width, (3,), s, name=f"convs_{i}")(sp)))
      outs.append(sp)
    last = splits[-1]
    if first:
      last = nn.avg_pool(last, (3,), strides=(s,), padding=((1, 1),))
    y = self.norm(name="bn3")(self.conv(out, (1,), 1, name="conv3")(jnp.concatenate(outs + [last],
                                                                                   -1)))
    if first:
      x = self.norm(name="downsample_bn")(self.conv(out, (1,), s, name="downsample_conv")(x))
    return nn.relu(x + y)


POINT_BLOCK = Res2Bottleneck1D

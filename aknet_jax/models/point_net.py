"""Point sub-net Q: the ResNet stages after the split as 1D convs over the ranked points.

Same topology and parameter names as the 2D stages (`layer4_0/conv1`, ...), so the compacted 2D
weights drop in: every k x k conv becomes a kernel-k 1D conv with the same stride and padding k//2,
BN normalises over (clips, points). The backbone's temporal modules have no counterpart here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from aknet_jax.models import conv as conv_lib
from aknet_jax.models import tada
from aknet_jax.models import tea
from aknet_jax.models.batch_norm import norm_layer

POINT_STRIDES = ("same", "squared")
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock1D(nn.Module):
  """ResNet-18/34 block on a point sequence (B, N, C)."""
  planes: int
  strides: int
  conv: Callable[..., Any]
  norm: Callable[..., Any]

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (3,), self.strides, name="conv1")(x)))
    y = self.norm(name="bn2")(self.conv(self.planes, (3,), 1, name="conv2")(y))
    if self.strides != 1 or x.shape[-1] != self.planes:
      x = self.norm(name="downsample_bn")(
          self.conv(self.planes, (1,), self.strides, name="downsample_conv")(x))
    return nn.relu(x + y)


class Bottleneck1D(nn.Module):
  """ResNet-50/101 bottleneck (stride on the kernel-3 conv, as ResNet v1.5) on (B, N, C)."""
  planes: int
  strides: int
  conv: Callable[..., Any]
  norm: Callable[..., Any]

  @nn.compact
  def __call__(self, x):
    out = self.planes * 4
    y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1,), 1, name="conv1")(x)))
    y = nn.relu(self.norm(name="bn2")(self.conv(self.planes, (3,), self.strides, name="conv2")(y)))
    y = self.norm(name="bn3")(self.conv(out, (1,), 1, name="conv3")(y))
    if self.strides != 1 or x.shape[-1] != out:
      x = self.norm(name="downsample_bn")(
          self.conv(out, (1,), self.strides, name="downsample_conv")(x))
    return nn.relu(x + y)


# Backbones whose Q block differs from the plain 1D bottleneck (None: the plain one). Same
# constructor (planes, strides, conv, norm) and call (B, N, C) -> (B, N', C') as Bottleneck1D.
POINT_BLOCKS = {"tea": tea.POINT_BLOCK, "tada2d": tada.POINT_BLOCK}


def _conv1d(features, kernel_size, strides, *, name, use_bias, dtype):
  """Kernel-k 1D conv with symmetric padding k//2, the 1D image of a padded k x k conv."""
  k = kernel_size[0]
  return conv_lib.Conv(features, kernel_size, strides=(strides,), padding=((k // 2, k // 2),),
                        use_bias=use_bias, kernel_init=_conv_init, dtype=dtype, name=name)


class PointNet(nn.Module):
  """Stages `first_stage`.. of a ResNet (0 = res2 / layer1) over points: (B, N, C) -> (B, N', C').

  stage_sizes: blocks per stage, e.g. (3, 4, 6, 3); width: the base width (planes of layer1).
  point_stride: what a stride-2 block of the 2D net does to the points: 'same' keeps stride 2
  (halves them), 'squared' strides by 4 (divides them by 4, as the 2D stage divides its h x w
  positions), on the kernel-3 conv and the 1x1 shortcut alike, so both give ceil(N / s) points.
  """
  stage_sizes: Sequence[int]
  first_stage: int
  width: int = 64
  bottleneck: bool = True
  use_bias: bool = False  # TDN's backbone convs carry biases.
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  point_stride: str = "same"
  backbone: str = "tsn"  # A backbone with its own 1D block in POINT_BLOCKS; else the plain ones.

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(_conv1d, use_bias=self.use_bias, dtype=self.dtype)
    norm = norm_layer(train=train, momentum=self.bn_momentum, axis_name=self.bn_axis_name,
                      dtype=self.dtype)
    if self.point_stride not in POINT_STRIDES:
      raise ValueError(f"point_stride: {self.point_stride!r} is not one of {POINT_STRIDES}")
    down = 4 if self.point_stride == "squared" else 2
    block = POINT_BLOCKS.get(self.backbone) or (Bottleneck1D if self.bottleneck else BasicBlock1D)
    x = x.astype(self.dtype)
    for i in range(self.first_stage, len(self.stage_sizes)):
      for b in range(self.stage_sizes[i]):
        strides = down if b == 0 and i > 0 else 1
        x = block(self.width * 2**i, strides, conv, norm, name=f"layer{i + 1}_{b}")(x)
    return x

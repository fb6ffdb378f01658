"""The 2D video backbone shared by the TSN classifier and AK-Net: ResNet + TSN / TSM / TDN.

Frames of all clips go through one 2D ResNet as a batch of B*T images; the temporal ops (TSM shift,
TDN difference stem and mSE/shift) regroup them by clip internally, so a batch must hold whole clips.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from aknet_jax.models import conv as conv_lib
from aknet_jax.models import resnet
from aknet_jax.models import tdn
from aknet_jax.models.batch_norm import norm_layer
from aknet_jax.models.max_pool import max_pool_3x3_s2

BACKBONES = ("tsn", "tsm", "tdn", "tea", "tada2d")
_NAMES = {"tada2d": "TAda2D"}  # As its paper writes it; the others are their field upper-cased.


def display_name(backbone: str) -> str:
  """The backbone as reports and logs name it: 'TSM', 'TAda2D'."""
  return _NAMES.get(backbone, backbone.upper())


def frames_per_segment(backbone: str) -> int:
  """Frames the model takes per segment: 5 consecutive ones for TDN, else 1."""
  return tdn.NUM_FRAMES if backbone == "tdn" else 1


def min_image_size(backbone: str, upto: str) -> int:
  """Smallest input side that leaves a usable map (maps are ceil(side / stride): every stride-2
  layer pads). TDN's mSE (res3-res5, blocks 1+ at the stage's output size) avg-pools by 2 in floor
  mode, so that map needs 2 cells: side > stride, 33 px up to res5, as the official code allows."""
  stride = resnet.stage_strides()[upto]
  return stride + 1 if backbone == "tdn" and upto != "res2" else stride


def check_frames(backbone: str, num_segments: int, shape: tuple, upto: str) -> None:
  """Raises a one-line ValueError when the frames do not fit the model, before any computation."""
  if upto not in resnet.STAGES:
    raise ValueError(f"upto: {upto!r} is not one of {resnet.STAGES}")
  want_l = frames_per_segment(backbone)
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"frames: shape {tuple(shape)} is not (B, T*L, H, W, 3)")
  if shape[1] != num_segments * want_l:
    raise ValueError(f"frames: axis 1 has {shape[1]} frames, expected config.dataset.num_segments "
                     f"* frames_per_segment = {num_segments} * {want_l}")
  size = min_image_size(backbone, upto)
  if min(shape[2], shape[3]) < size:
    raise ValueError(f"frames: image {shape[2]}x{shape[3]} is too small for backbone "
                     f"{backbone!r} up to {upto}; config.dataset.image_size must be >= {size}")


class VideoBackbone(nn.Module):
  """ResNet-`depth` of base `width` with the temporal ops of `backbone` (tsn: none)."""
  backbone: str = "tsm"
  depth: int = 50
  width: int = 64
  num_segments: int = 8
  shift_div: int = 8
  partial_bn: bool = False  # TSN's partial BN: every BN but the stem's keeps its statistics.
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, frames, *, train: bool, upto: str = "res5") -> jnp.ndarray:
    """frames (B, T*L, H, W, 3) float, segment-major -> features (B*T, h, w, C) after stage `upto`."""
    check_frames(self.backbone, self.num_segments, frames.shape, upto)
    t, l = self.num_segments, frames_per_segment(self.backbone)
    conv = functools.partial(conv_lib.Conv, use_bias=self.backbone == "tdn", dtype=self.dtype,
                             kernel_init=resnet.conv_kernel_init)
    norm = norm_layer(train=train and not self.partial_bn, momentum=self.bn_momentum,
                      axis_name=self.bn_axis_name, dtype=self.dtype)
    stem_norm = functools.partial(norm, use_running_average=not train)
    stage = functools.partial(resnet.stage, depth=self.depth, width=self.width,
                              num_segments=t, shift_div=self.shift_div, conv=conv, norm=norm)
    last = resnet.STAGES.index(upto)

    b, _, h, w, _ = frames.shape
    clips = frames.reshape((b * t, l, h, w, 3))
    if self.backbone == "tdn":
      diff = tdn.avg_pool2(tdn.rgb_differences(clips))
      diff = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                  name="conv1_5")(diff)
      diff = nn.relu(norm(name="bn1_5")(diff))
      diff = max_pool_3x3_s2(diff)
      x = resnet.stem(clips[:, tdn.NUM_FRAMES // 2], self.width, conv, stem_norm)
      x = tdn.fuse(x, diff, t)
      x = stage(x, 0)
      diff = stage(diff, 0, prefix="resnext_layer")
      x = tdn.fuse(x, diff, t)
      temporal = "tdn"
    else:
      temporal = self.backbone if self.backbone in resnet.TEMPORAL_OPS else "none"
      # TAda2D's stem has no max-pool; its layer1 strides instead (resnet.stage).
      x = resnet.stem(clips[:, 0], self.width, conv, stem_norm,
                      max_pool=self.backbone != "tada2d")
      x = stage(x, 0, temporal=temporal)
    for i in range(1, last + 1):
      x = stage(x, i, temporal=temporal)
    return x

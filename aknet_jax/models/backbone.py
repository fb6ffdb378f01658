"""The 2D video backbone shared by the TSN classifier and AK-Net: ResNet + TSN / TSM / TDN.

Frames of all clips go through one 2D ResNet as a batch of B*T images; the temporal ops (TSM shift,
TDN difference stem and mSE/shift) regroup them by clip internally, so a batch must hold whole clips.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from aknet_jax.models import resnet
from aknet_jax.models import tdn
from aknet_jax.models.batch_norm import BatchNorm

BACKBONES = ("tsn", "tsm", "tdn")


def frames_per_segment(backbone: str) -> int:
  """Frames the loader gives per segment: 5 consecutive ones for TDN, else 1."""
  return tdn.NUM_FRAMES if backbone == "tdn" else 1


def min_image_size(backbone: str, upto: str) -> int:
  """Smallest input side that leaves a usable map: TDN's mSE pools its map by 2, so it needs 2x2."""
  return resnet.stage_strides()[upto] * (2 if backbone == "tdn" else 1)


def check_inputs(config: ml_collections.ConfigDict, shape: tuple, upto: str) -> None:
  """Raises a one-line ValueError naming the field when the config or the frames do not fit."""
  m, d = config.model, config.dataset
  if m.backbone not in BACKBONES:
    raise ValueError(f"config.model.backbone: {m.backbone!r} is not one of {BACKBONES}")
  if m.depth not in resnet.STAGE_SIZES:
    raise ValueError(f"config.model.depth: {m.depth!r} is not one of {tuple(resnet.STAGE_SIZES)}")
  if m.backbone == "tdn" and resnet.expansion(m.depth) == 1:
    raise ValueError(f"config.model.depth: {m.depth!r}, but backbone 'tdn' needs a bottleneck "
                     "ResNet (50 or 101)")
  if upto not in resnet.STAGES:
    raise ValueError(f"upto: {upto!r} is not one of {resnet.STAGES}")
  want_l = frames_per_segment(m.backbone)
  if d.frames_per_segment != want_l:
    raise ValueError(f"config.dataset.frames_per_segment: {d.frames_per_segment!r}, but backbone "
                     f"{m.backbone!r} takes {want_l}")
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"frames: shape {tuple(shape)} is not (B, T*L, H, W, 3)")
  if shape[1] != d.num_segments * want_l:
    raise ValueError(f"frames: axis 1 has {shape[1]} frames, expected config.dataset.num_segments "
                     f"* frames_per_segment = {d.num_segments} * {want_l}")
  size = min_image_size(m.backbone, upto)
  if min(shape[2], shape[3]) < size:
    raise ValueError(f"frames: image {shape[2]}x{shape[3]} is too small for backbone "
                     f"{m.backbone!r} up to {upto}; config.dataset.image_size must be >= {size}")


class VideoBackbone(nn.Module):
  """ResNet (depth/width from config) with the temporal ops of `config.model.backbone`."""
  config: ml_collections.ConfigDict
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, frames, *, train: bool, upto: str = "res5") -> jnp.ndarray:
    """frames (B, T*L, H, W, 3) float, segment-major -> features (B*T, h, w, C) after stage `upto`."""
    config, m = self.config, self.config.model
    check_inputs(config, frames.shape, upto)
    t, l = config.dataset.num_segments, config.dataset.frames_per_segment
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    conv = functools.partial(nn.Conv, use_bias=m.backbone == "tdn", dtype=dtype,
                             kernel_init=resnet.conv_kernel_init)
    norm = functools.partial(BatchNorm, use_running_average=not train or m.partial_bn,
                             momentum=m.bn_momentum, epsilon=1e-5, dtype=dtype,
                             axis_name=self.bn_axis_name, use_fast_variance=False)
    stem_norm = functools.partial(norm, use_running_average=not train)
    last = resnet.STAGES.index(upto)

    b, _, h, w, _ = frames.shape
    clips = frames.reshape((b * t, l, h, w, 3))
    if m.backbone == "tdn":
      diff = tdn.avg_pool2(tdn.rgb_differences(clips))
      diff = conv(m.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                  name="conv1_5")(diff)
      diff = nn.relu(norm(name="bn1_5")(diff))
      diff = nn.max_pool(diff, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      x = resnet.stem(clips[:, tdn.NUM_FRAMES // 2], m.width, conv, stem_norm)
      x = tdn.fuse(x, diff, t)
      x = resnet.stage(x, 0, config, conv, norm)
      diff = resnet.stage(diff, 0, config, conv, norm, prefix="resnext_layer")
      x = tdn.fuse(x, diff, t)
      temporal = "tdn"
    else:
      temporal = "tsm" if m.backbone == "tsm" else "none"
      x = resnet.stem(clips[:, 0], m.width, conv, stem_norm)
      x = resnet.stage(x, 0, config, conv, norm, temporal)
    for i in range(1, last + 1):
      x = resnet.stage(x, i, config, conv, norm, temporal)
    return x

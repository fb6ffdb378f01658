"""Flax models: ResNet video backbones (TSN / TSM / TDN), the TSN classifier and AK-Net.

`build(config)` is the single entry point: the plain video classifier for stage 1, AK-Net otherwise.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from aknet_jax.models import resnet
from aknet_jax.models.aknet import AKNet
from aknet_jax.models.compaction import compact
from aknet_jax.models.video_net import VideoNet

__all__ = ["AKNet", "VideoNet", "build", "compact", "feature_grid", "feature_stride", "gmacs",
           "init_variables", "input_shape", "param_count", "variable_shapes"]


def build(config: ml_collections.ConfigDict, *, bn_axis_name: str | None = None) -> nn.Module:
  """VideoNet (backbone + TSN consensus) for stage '1', AKNet for stages '2' and 'both'."""
  if str(config.stage) == "1":
    return VideoNet(config, bn_axis_name=bn_axis_name)
  return AKNet(config, bn_axis_name=bn_axis_name)


def input_shape(config: ml_collections.ConfigDict) -> tuple:
  """(1, T*L, S, S, 3): one clip as the model takes it."""
  d = config.dataset
  return (1, d.num_segments * d.frames_per_segment, d.image_size, d.image_size, 3)


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array, *,
                   bn_axis_name: str | None = None) -> dict:
  """{'params', 'batch_stats'} of `build(config)`, from a jitted init on one zero clip."""
  model = build(config, bn_axis_name=bn_axis_name)
  frames = jnp.zeros(input_shape(config), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, frames, train=False))(rng)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def variable_shapes(config: ml_collections.ConfigDict) -> dict:
  """init_variables' output as ShapeDtypeStructs (traced, never allocated)."""
  return jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))


def gmacs(config: ml_collections.ConfigDict, *, shapes: dict | None = None) -> float:
  """Inference cost of one clip in GFLOPs as the paper counts them, i.e. multiply-accumulates.

  XLA's cost analysis of the jitted `apply(train=False)`, flops / 2 / 1e9; nothing is allocated.
  XLA counts only the kernel taps that fall inside the (unpadded) input. `shapes`: the
  `variable_shapes(config)` if already at hand.
  """
  model = build(config)
  frames = jax.ShapeDtypeStruct(input_shape(config), jnp.float32)
  shapes = variable_shapes(config) if shapes is None else shapes
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(shapes, frames)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"]) / 2 / 1e9


def param_count(config: ml_collections.ConfigDict, *, inference: bool = False,
                shapes: dict | None = None) -> int:
  """Trainable parameters of `build(config)` (BN statistics excluded); nothing is allocated.

  inference=True leaves out AK-Net's training-only auxiliary head.
  """
  params = dict((variable_shapes(config) if shapes is None else shapes)["params"])
  if inference:
    params.pop("aux", None)
  leaves = jax.tree_util.tree_leaves(params)
  return int(sum(math.prod(x.shape) for x in leaves))


def feature_stride(config: ml_collections.ConfigDict) -> int:
  """Input pixels per feature cell at the split (res2 4, res3 8, res4 16)."""
  return resnet.stage_strides()[config.model.aknet.split]


def feature_grid(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(h, w) of the split's feature map for square `dataset.image_size` inputs."""
  s = config.dataset.image_size // feature_stride(config)
  return s, s

"""Flax models: ResNet video backbones (TSN / TSM / TDN), the TSN classifier and AK-Net.

The config stops here. `fields(config, kind)` reads the plain fields a model of `kind` is built
from (the architecture a checkpoint records), `from_fields` builds the linen module, and
`build(config, kind)` does both. Every module below takes plain fields and never sees a config.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from aknet_jax.models import compaction
from aknet_jax.models import resnet
from aknet_jax.models import winograd
from aknet_jax.models.aknet import AKNet
from aknet_jax.models.backbone import VideoBackbone, display_name
from aknet_jax.models.video_net import VideoNet

__all__ = ["AKNet", "KINDS", "VideoBackbone", "VideoNet", "build", "compact", "display_name",
           "feature_grid", "feature_stride", "fields", "from_fields", "gmacs", "init_variables",
           "input_shape", "param_count", "variable_shapes"]

# Each factory field and the config path it is read from (also how errors name it).
_BACKBONE_FIELDS = {
    "backbone": "model.backbone", "depth": "model.depth", "width": "model.width",
    "num_segments": "dataset.num_segments", "shift_div": "model.shift_div",
    "partial_bn": "model.partial_bn", "bn_momentum": "model.bn_momentum",
    "half_precision": "half_precision",
}
_CLASSIFIER_FIELDS = {"num_classes": "dataset.num_classes", "dropout": "model.dropout"}
_AKNET_FIELDS = {
    "split": "model.aknet.split", "alpha": "model.aknet.alpha", "tau": "model.aknet.tau",
    "transform_mode": "model.aknet.transform_mode",
    "transform_rank": "model.aknet.transform_rank", "se_reduction": "model.aknet.se_reduction",
    "point_stride": "model.aknet.point_stride", "ranking": "model.aknet.ranking",
    "concat_global": "model.aknet.concat_global",
    "position_embedding": "model.aknet.position_embedding", "aux_head": "model.aknet.aux_head",
}
FIELD_PATHS = {
    "backbone": _BACKBONE_FIELDS,
    "video_net": {**_BACKBONE_FIELDS, **_CLASSIFIER_FIELDS},
    "aknet": {**_BACKBONE_FIELDS, **_CLASSIFIER_FIELDS, **_AKNET_FIELDS},
}
KINDS = tuple(FIELD_PATHS)
# The fields a checkpoint's model and the config's must agree on: those that set variable shapes,
# and Q's point stride, which sets what the same variables compute.
SHAPE_FIELDS = ("backbone", "depth", "width", "num_classes", "num_segments", "split",
                "transform_mode", "transform_rank", "se_reduction", "point_stride", "ranking",
                "concat_global", "position_embedding", "aux_head")


def _read(config: ml_collections.ConfigDict, path: str):
  value = config
  for key in path.split("."):
    value = value[key]
  return tuple(value) if isinstance(value, (list, tuple)) else value


def fields(config: ml_collections.ConfigDict, kind: str) -> dict:
  """{'kind': kind, field: value, ...}: plain (JSON-able) values of the model's fields."""
  if kind not in FIELD_PATHS:
    raise ValueError(f"model kind {kind!r} is not one of {KINDS}")
  return {"kind": kind, **{f: _read(config, p) for f, p in FIELD_PATHS[kind].items()}}


def from_fields(model_fields: dict, *, bn_axis_name: str | None = None) -> nn.Module:
  """The linen module of `fields(...)`'s output; `bn_axis_name` syncs BatchNorm across devices."""
  f = dict(model_fields)
  kind = f.pop("kind")
  dtype = jnp.bfloat16 if f.pop("half_precision") else jnp.float32
  backbone = VideoBackbone(**{k: f.pop(k) for k in list(f) if k in _BACKBONE_FIELDS},
                           dtype=dtype, bn_axis_name=bn_axis_name)
  if kind == "backbone":
    return backbone
  return (VideoNet if kind == "video_net" else AKNet)(backbone=backbone, **f)


def build(config: ml_collections.ConfigDict, kind: str, *,
          bn_axis_name: str | None = None) -> nn.Module:
  """The model of `kind` ('backbone', 'video_net' for stage 1, 'aknet') the config describes."""
  from aknet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  return from_fields(fields(config, kind), bn_axis_name=bn_axis_name)


def input_shape(config: ml_collections.ConfigDict) -> tuple:
  """(1, T*L, S, S, 3): one clip as the model takes it."""
  d = config.dataset
  return (1, d.num_segments * d.frames_per_segment, d.image_size, d.image_size, 3)


def init_variables(config: ml_collections.ConfigDict, kind: str, rng: jax.Array, *,
                   bn_axis_name: str | None = None) -> dict:
  """{'params', 'batch_stats'} of `build(config, kind)`, from a jitted init on one zero clip."""
  model = build(config, kind, bn_axis_name=bn_axis_name)
  frames = jnp.zeros(input_shape(config), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, frames, train=False))(rng)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def variable_shapes(config: ml_collections.ConfigDict, kind: str) -> dict:
  """init_variables' output as ShapeDtypeStructs (traced, never allocated)."""
  return jax.eval_shape(functools.partial(init_variables, config, kind), jax.random.key(0))


def gmacs(config: ml_collections.ConfigDict, kind: str, *, shapes: dict | None = None) -> float:
  """Inference cost of one clip in GFLOPs as the paper counts them, i.e. multiply-accumulates.

  XLA's cost analysis of the jitted `apply(train=False)`, flops / 2 / 1e9; nothing is allocated.
  XLA counts only the kernel taps that fall inside the (unpadded) input. `shapes`: the
  `variable_shapes(config, kind)` if already at hand.
  """
  model = build(config, kind)
  frames = jax.ShapeDtypeStruct(input_shape(config), jnp.float32)
  shapes = variable_shapes(config, kind) if shapes is None else shapes
  return hlo_flops(lambda v, x: model.apply(v, x, train=False), shapes, frames) / 2 / 1e9


def hlo_flops(fn, *args, axis_name: str | None = None) -> float:
  """XLA's flop count of `fn(*args)` from its HLO before fusion, analysed on the host CPU backend
  that every JAX install has, so the count is the same on every machine (XLA:GPU analyses only
  compiled programs, and there leaves cuDNN's convolutions out). `args`: arrays or
  ShapeDtypeStructs; with `axis_name`, `fn` runs under a one-device pmap (leading axis of 1).
  Where the CPU backend is switched off (JAX_PLATFORMS without cpu), the default backend counts.
  Convolutions count in their direct form (`winograd.direct_form`), as on every other backend."""
  try:
    devices = jax.devices("cpu")[:1]
  except RuntimeError:
    devices = jax.local_devices()[:1]
  counted = lambda *a: fn(*a)  # A fresh function: no trace cached outside `direct_form` reused.
  with winograd.direct_form():
    if axis_name is None:
      sharding = jax.sharding.SingleDeviceSharding(devices[0])
      specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                           args)
      lowered = jax.jit(counted).lower(*specs)
    else:
      specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
      lowered = jax.pmap(counted, axis_name=axis_name, devices=devices).lower(*specs)
  cost = lowered.cost_analysis()
  if cost is None:  # Backends that analyse only compiled programs.
    cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))  # XLA leaves the key out of a program with no flops.


def param_count(config: ml_collections.ConfigDict, kind: str, *, inference: bool = False,
                shapes: dict | None = None) -> int:
  """Trainable parameters of `build(config, kind)` (BN statistics excluded); nothing allocated.

  inference=True leaves out AK-Net's training-only auxiliary head.
  """
  params = dict((variable_shapes(config, kind) if shapes is None else shapes)["params"])
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


def compact(stage1_variables, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Stage-1 VideoNet variables -> the variables of the config's AK-Net (`compaction.compact`);
  `model.aknet.q_init='random'` leaves Q freshly initialised instead of compacted (ablation)."""
  return compaction.compact(stage1_variables, build(config, "aknet"), input_shape(config), rng,
                            compact_q=config.model.aknet.q_init == "compact")

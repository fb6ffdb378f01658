"""PyTorch state dicts (torchvision ResNet, official TSM / TDN checkpoints) -> `VideoNet` variables.

Names are matched by rewriting both sides to one canonical torch form: checkpoint keys lose the
`module.` / `base_model.` prefixes, TSM's `.net` and TDN's `_bak`; Flax paths are spelled as torch
names (`layer1_0/downsample_conv` -> `layer1.0.downsample.0`). Tensors are transposed to NHWC/HWIO.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from aknet_jax.models import backbone as backbone_lib
from aknet_jax.models.video_net import VideoNet

# Checkpoint entries without a counterpart in the model: BN counters, ImageNet classifiers, TDN's
# unused `conv1_temp` (and `conv1_temp1`, an alias of it in TDN's first release).
_DROPPED = (re.compile(r"(^|\.)num_batches_tracked$"),
            re.compile(r"^(fc|last_linear|conv1_temp1?)\."))
# Flax module names that differ from their torch names (within a block or at top level).
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
                 "conv1_5": "conv1_5.0", "bn1_5": "conv1_5.1"}
_BLOCK = re.compile(r"^(layer\d+|resnext_layer1)_(\d+)$")


def canonical_key(key: str) -> str:
  """Checkpoint key -> canonical torch name (prefixes, TSM's `.net`, TDN's `layerL_bak` removed)."""
  for prefix in ("module.", "base_model."):
    if key.startswith(prefix):
      key = key[len(prefix):]
  key = key.replace(".net.", ".")
  return re.sub(r"^layer(\d)_bak\.", r"layer\1.", key)


def _torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
  """Flax (collection, path) -> (canonical torch name, kind of tensor)."""
  *modules, leaf = path
  if modules[0] == "backbone":
    modules = modules[1:]
  parts = []
  for name in modules:
    block = _BLOCK.match(name)
    parts.append(f"{block.group(1)}.{block.group(2)}" if block else _MODULE_NAMES.get(name, name))
  if modules[-1] == "shift":
    return ".".join(parts + ["conv", "weight"]), "conv1d"
  if collection == "batch_stats":
    return ".".join(parts + [{"mean": "running_mean", "var": "running_var"}[leaf]]), "copy"
  torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return ".".join(parts + [torch_leaf]), "kernel" if leaf == "kernel" else "copy"


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
  """Torch layout -> Flax layout (reference doc 1.5)."""
  if kind == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if kind == "kernel" and value.ndim == 2:
    return value.T  # Linear (out, in) -> (in, out)
  if kind == "conv1d":
    return value.transpose(2, 1, 0)  # (C, 1, 3) -> (3, 1, C)
  return value


def _torch_shape(shape: tuple, kind: str, ndim: int) -> tuple:
  """Flax shape -> the torch shape it comes from (for error messages)."""
  if kind == "kernel" and ndim == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "kernel" and ndim == 2:
    return (shape[1], shape[0])
  if kind == "conv1d":
    return (shape[2], shape[1], shape[0])
  return tuple(shape)


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().cpu().float()
  return np.asarray(value, dtype=np.float32)


def variable_shapes(config) -> dict:
  """Shapes of a `VideoNet(config)`'s variables, without allocating them."""
  size = backbone_lib.min_image_size(config.model.backbone, "res5")
  frames = jnp.zeros((1, config.dataset.num_segments * config.dataset.frames_per_segment,
                      size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: VideoNet(config).init(jax.random.key(0), frames, train=False))


def torch_to_variables(state_dict: Mapping[str, Any], config, *,
                       init_variables: Mapping | None = None) -> dict:
  """Converts a torch state dict to {'params', 'batch_stats'} of `VideoNet(config)`.

  Values may be numpy arrays or torch tensors. ImageNet checkpoints have no `new_fc`: pass
  `init_variables` (of an initialised `VideoNet(config)`) to take the classifier from there.
  """
  expected = {}  # canonical torch name -> (collection, flax path, flax shape, kind)
  for collection, tree in variable_shapes(config).items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      path = tuple(p.key for p in path)
      name, kind = _torch_name(collection, path)
      expected[name] = (collection, path, tuple(leaf.shape), kind)

  found = {}  # canonical name -> (original key, Flax-layout array)
  for key, value in state_dict.items():
    name = canonical_key(key)
    if any(p.search(name) for p in _DROPPED):
      continue
    if name not in expected:
      raise ValueError(f"checkpoint: unexpected key {key!r} (as {name!r}) for backbone "
                       f"{config.model.backbone!r}, depth {config.model.depth}; check config.model")
    if name in found:
      raise ValueError(f"checkpoint: keys {found[name][0]!r} and {key!r} both map to {name!r}")
    _, _, shape, kind = expected[name]
    value, torch_shape = _as_numpy(value), _torch_shape(shape, kind, len(shape))
    if value.shape != torch_shape:
      raise ValueError(f"checkpoint: key {key!r} has shape {value.shape}, expected {torch_shape} "
                       f"(config.model / config.dataset.num_classes must match the checkpoint)")
    found[name] = (key, _to_flax(value, kind))

  out = {"params": {}, "batch_stats": {}}
  for name, (collection, path, shape, kind) in expected.items():
    if name in found:
      value = found[name][1]
    elif init_variables is not None and path[0] == "new_fc":
      value = np.asarray(init_variables[collection][path[0]][path[1]], np.float32)
    else:
      raise ValueError(f"checkpoint: missing key {name!r} (shape "
                       f"{_torch_shape(shape, kind, len(shape))}) for backbone "
                       f"{config.model.backbone!r}, depth {config.model.depth}")
    node = out[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(value)
  return out

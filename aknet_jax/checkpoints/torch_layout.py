"""PyTorch state dicts (torchvision ResNet, official TSM / TDN) -> `VideoNet` variables.

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

from aknet_jax import models
from aknet_jax.models import backbone as backbone_lib

# Checkpoint entries without a counterpart in the model: BN counters, ImageNet classifiers, TDN's
# unused `conv1_temp` (and `conv1_temp1`, an alias of it in TDN's first release).
_DROPPED = (re.compile(r"(^|\.)num_batches_tracked$"),
            re.compile(r"^(fc|last_linear|conv1_temp1?)\."))
# Flax module names that differ from their torch names (within a block or at top level).
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
                 "conv1_5": "conv1_5.0", "bn1_5": "conv1_5.1"}
_BLOCK = re.compile(r"^(layer\d+|resnext_layer1)_(\d+)$")
_TEA_LIST = re.compile(r"^(convs|bns|shifts)_(\d+)$")  # TEA's ModuleLists: `convs_0` -> `convs.0`.


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
    listed = _TEA_LIST.match(name)
    parts.append(f"{block.group(1)}.{block.group(2)}" if block else
                 f"{listed.group(1)}.{listed.group(2)}" if listed else _MODULE_NAMES.get(name, name))
  if modules[-1] == "shift" or modules[-1].startswith("shifts_"):  # TDN's / TEA's Conv1d (C, 1, 3).
    return ".".join(parts + ["conv", "weight"]), "conv1d"
  if collection == "batch_stats":
    return ".".join(parts + [{"mean": "running_mean", "var": "running_var"}[leaf]]), "copy"
  torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return ".".join(parts + [torch_leaf]), "kernel" if leaf == "kernel" else "copy"


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
  """Torch layout -> Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
  if kind == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if kind == "kernel" and value.ndim == 2:
    return value.T  # Linear (out, in) -> (in, out)
  if kind == "kernel" and value.ndim == 3:
    return value.transpose(2, 1, 0)  # Conv1d OIK -> KIO (TAda2D's route function)
  if kind == "conv1d":
    return value.transpose(2, 1, 0)  # (C, 1, 3) -> (3, 1, C)
  return value


def _torch_shape(shape: tuple, kind: str, ndim: int) -> tuple:
  """Flax shape -> the torch shape it comes from (for error messages)."""
  if kind == "kernel" and ndim == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "kernel" and ndim == 2:
    return (shape[1], shape[0])
  if kind == "kernel" and ndim == 3:
    return (shape[2], shape[1], shape[0])
  if kind == "conv1d":
    return (shape[2], shape[1], shape[0])
  return tuple(shape)


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().cpu().float()
  return np.asarray(value, dtype=np.float32)


def _expected(config) -> dict:
  """Canonical torch name -> (collection, Flax path, Flax shape, kind) per `VideoNet` variable."""
  expected = {}
  # Weight shapes do not depend on the image size; the smallest one the backbone takes suffices.
  cfg = config.copy_and_resolve_references()
  size = backbone_lib.min_image_size(config.model.backbone, "res5")
  size = -(-size // 32) * 32  # The config takes multiples of 32 (TDN's 33 px -> 64).
  cfg.dataset.image_size = max(cfg.dataset.image_size, size)
  cfg.dataset.resize_short = max(cfg.dataset.resize_short, cfg.dataset.image_size)
  for collection, tree in models.variable_shapes(cfg, "video_net").items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      path = tuple(p.key for p in path)
      name, kind = _torch_name(collection, path)
      expected[name] = (collection, path, tuple(leaf.shape), kind)
  return expected


_HINT = "config.model / config.dataset.num_classes must match the checkpoint"


def _read(state_dict: Mapping[str, Any], expected: dict, config, hint: str = _HINT) -> dict:
  """Canonical name -> (checkpoint key, Flax-layout array); one-line errors on bad keys/shapes."""
  found = {}
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
                       f"({hint})")
    found[name] = (key, _to_flax(value, kind))
  return found


def _missing(name: str, expected: dict, config) -> ValueError:
  shape, kind = expected[name][2], expected[name][3]
  return ValueError(f"checkpoint: missing key {name!r} (shape "
                    f"{_torch_shape(shape, kind, len(shape))}) for backbone "
                    f"{config.model.backbone!r}, depth {config.model.depth}")


def _tree(values: dict, expected: dict) -> dict:
  """{canonical name: array} -> {'params': ..., 'batch_stats': ...} nested as the model has them."""
  out = {"params": {}, "batch_stats": {}}
  for name, value in values.items():
    collection, path = expected[name][:2]
    node = out[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(value)
  return out


def torch_to_variables(state_dict: Mapping[str, Any], config, *,
                       init_variables: Mapping | None = None) -> dict:
  """Converts a torch state dict to {'params', 'batch_stats'} of `VideoNet(config)`.

  Values may be numpy arrays or torch tensors. ImageNet checkpoints have no `new_fc`: pass
  `init_variables` (of an initialised `VideoNet(config)`) to take the classifier from there.
  """
  expected = _expected(config)
  found = _read(state_dict, expected, config)
  values = {}
  for name, (collection, path, _, _) in expected.items():
    if name in found:
      values[name] = found[name][1]
    elif init_variables is not None and path[0] == "new_fc":
      values[name] = np.asarray(init_variables[collection][path[0]][path[1]], np.float32)
    else:
      raise _missing(name, expected, config)
  return _tree(values, expected)


# The tensors of a torchvision ImageNet ResNet (classifier `fc` aside).
_IMAGENET = re.compile(r"^(conv1\.weight|bn1\.\w+|layer\d\.\d+\.(conv\d\.weight|bn\d\.\w+|"
                       r"downsample\.0\.weight|downsample\.1\.\w+))$")


def imagenet_to_variables(state_dict: Mapping[str, Any], config) -> dict:
  """A torchvision ImageNet ResNet -> the part of `VideoNet(config)`'s variables it initialises.

  The classifier is dropped; temporal modules, `new_fc` and TDN's conv biases are absent from the
  result (they keep their fresh init). For TDN, `resnext_layer1` is a copy of `layer1` and `conv1_5`
  is `conv1` averaged over RGB and repeated over the 12 difference channels, as TDN starts from
  ImageNet (its `conv1_5` starts as the stem averaged over RGB).
  """
  expected = _expected(config)
  wanted = {n: e for n, e in expected.items() if _IMAGENET.match(n)}
  hint = "config.model.depth and width must match the file; torchvision ResNets have width 64"
  found = {n: v for n, (_, v) in _read(state_dict, wanted, config, hint).items()}
  for name in wanted:
    if name not in found:
      raise _missing(name, wanted, config)
  if config.model.backbone == "tdn":
    for name in expected:
      if name.startswith("resnext_") and name[len("resnext_"):] in found:
        found[name] = found[name[len("resnext_"):]]
    stem = found["conv1.weight"]  # HWIO
    channels = expected["conv1_5.0.weight"][2][2]
    found["conv1_5.0.weight"] = np.repeat(stem.mean(axis=2, keepdims=True), channels, axis=2)
  return _tree(found, expected)


def _fresh_classifier(shape: tuple, seed: int) -> dict:
  """A new `new_fc` (Flax kernel `shape` = (in, K)) as TSN initialises it: N(0, 0.001), bias 0."""
  kernel = 0.001 * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)
  return {"new_fc.weight": np.asarray(kernel), "new_fc.bias": np.zeros(shape[1:], np.float32)}


def video_checkpoint_to_variables(state_dict: Mapping[str, Any], config, *,
                                  drop_classifier: bool = False, seed: int = 0) -> tuple[dict, str]:
  """An official TSM / TSN / TDN state dict -> (`VideoNet(config)` variables, classifier origin).

  The backbone must match the config exactly. The classifier (`new_fc`, or `base_model.fc` of a
  TSN trained without dropout) is kept when its class count is the config's; `drop_classifier`
  replaces it with a fresh one. The origin is 'checkpoint' or 'fresh'.
  """
  state = dict(state_dict)
  names = {canonical_key(k): k for k in state}
  if "new_fc.weight" not in names and "fc.weight" in names:  # TSN with dropout 0 (doc 1.4).
    for leaf in ("weight", "bias"):
      if f"fc.{leaf}" in names:
        state[f"new_fc.{leaf}"] = state.pop(names[f"fc.{leaf}"])
    names = {canonical_key(k): k for k in state}
  head = {f"new_fc.{leaf}": state.pop(names[f"new_fc.{leaf}"])
          for leaf in ("weight", "bias") if f"new_fc.{leaf}" in names}

  expected = _expected(config)
  values = {n: v for n, (_, v) in _read(state, expected, config).items()}
  for name in expected:
    if name not in values and not name.startswith("new_fc."):
      raise _missing(name, expected, config)

  k = config.dataset.num_classes
  if not head and not drop_classifier:
    raise ValueError("checkpoint: no classifier (new_fc.weight / new_fc.bias): pass "
                     "--drop_classifier to start a fresh one (an ImageNet ResNet? use "
                     "--source=torchvision)")
  if head and not drop_classifier:
    weight = np.shape(head.get("new_fc.weight", ()))
    if len(weight) == 2 and weight[0] != k:
      imagenet = " (an ImageNet ResNet? use --source=torchvision)" if weight[0] == 1000 else ""
      raise ValueError(f"checkpoint: its classifier has {weight[0]} classes "
                       f"(new_fc.weight {weight}) but config.dataset.num_classes={k}: set "
                       f"--config.dataset.num_classes={weight[0]} to keep it, or pass "
                       f"--drop_classifier to start a fresh {k}-class one{imagenet}")
    found = {n: v for n, (_, v) in _read(head, expected, config).items()}
    for name in ("new_fc.weight", "new_fc.bias"):
      if name not in found:
        raise _missing(name, expected, config)
    values.update(found)
    return _tree(values, expected), "checkpoint"
  values.update(_fresh_classifier(expected["new_fc.weight"][2], seed))
  return _tree(values, expected), "fresh"



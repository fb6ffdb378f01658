"""PyTorch checkpoints (torchvision ResNet, official TSM / TDN) -> `VideoNet` variables and Orbax.

Names are matched by rewriting both sides to one canonical torch form: checkpoint keys lose the
`module.` / `base_model.` prefixes, TSM's `.net` and TDN's `_bak`; Flax paths are spelled as torch
names (`layer1_0/downsample_conv` -> `layer1.0.downsample.0`). Tensors are transposed to NHWC/HWIO.

CLI (torch is the `convert` extra, imported only to read the file, with `weights_only=True`):
  python -m aknet_jax.convert --source=torchvision|tsm|tdn --checkpoint=FILE
      --config=CONFIG --workdir=DIR [--drop_classifier]
tsm / tdn files become WORKDIR/stage1/checkpoints/0 (what `main --mode=eval` and stage 2 read);
torchvision ImageNet files WORKDIR/checkpoints/0, backbone only, for `config.init_from`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from aknet_jax import checkpoints, cli, config as config_lib
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
  """Torch layout -> Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
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


def _expected(config) -> dict:
  """Canonical torch name -> (collection, Flax path, Flax shape, kind) per `VideoNet` variable."""
  expected = {}
  for collection, tree in variable_shapes(config).items():
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


# --- Reading PyTorch files and writing the Orbax checkpoint. -------------------------------------

SOURCES = ("torchvision", "tsm", "tdn")
_EXTRA = 'pip install -e ".[convert]"'
_TDN_KEY = re.compile(r"(^|\.)(layer\d_bak|conv1_5|resnext_layer1)\.")


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _numpy_globals() -> list:
  """NumPy scalar/dtype constructors that training checkpoints pickle (`best_prec1`): data only."""
  core = getattr(np, "_core", None) or np.core
  return [core.multiarray.scalar, np.dtype] + [
      type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch file as NumPy arrays, read without running any pickled code.

  Uses `torch.load(weights_only=True)`. Takes a bare state dict or a training checkpoint that nests
  it under 'state_dict' (official TSM / TDN) or 'model'.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--checkpoint={path}: no such file")
  try:
    import torch  # pylint: disable=g-import-not-at-top (optional extra, never needed to train)
  except ImportError:
    raise ValueError(f"reading PyTorch checkpoints needs torch: {_EXTRA}") from None
  try:
    with torch.serialization.safe_globals(_numpy_globals()):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except (pickle, zip, EOF, legacy-format errors)
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
      raise ValueError(f"{path}: torch.load(weights_only=True) refuses it (it pickles "
                       f"{refused.group(1)}); only tensors and plain containers are read, never "
                       "pickled code. If you trust the file, re-save its state dict alone: "
                       "torch.save(ckpt['state_dict'], 'weights.pth')") from None
    reason = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    reason = reason.group(1) if reason else f"{type(e).__name__}: {_first_line(e)}"
    raise ValueError(f"{path} is not a PyTorch checkpoint (torch.load: {reason})") from None
  state = obj
  if isinstance(obj, Mapping):
    nested = [k for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)]
    state = obj[nested[0]] if nested else obj
  if not isinstance(state, Mapping) or not state:
    raise ValueError(f"{path} holds a {'empty ' if isinstance(state, Mapping) else ''}"
                     f"{type(state).__name__}, not a state dict (name -> tensor) or a dict with "
                     "one under 'state_dict'")
  for key, value in state.items():
    if not isinstance(key, str) or not isinstance(value, torch.Tensor):
      raise ValueError(f"{path} is not a model checkpoint: expected a state dict (name -> tensor) "
                       f"or a dict with one under 'state_dict', found {key!r} -> "
                       f"{type(value).__name__}")
  return {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).numpy()
          for k, v in state.items()}


def _check_source(state: Mapping[str, Any], source: str, config, path: str):
  """One-line errors for a file of another kind than --source, or a config of another backbone."""
  backbone = config.model.backbone
  tdn_key = next((k for k in state if _TDN_KEY.search(k)), None)
  shift_key = next((k for k in state if ".net." in k), None)
  video_key = tdn_key or shift_key or next(
      (k for k in state if canonical_key(k).startswith("new_fc.")), None)
  if source == "torchvision" and video_key:
    raise ValueError(f"{path} is a video checkpoint (key {video_key!r}), not an ImageNet ResNet: "
                     f"use --source={'tdn' if tdn_key else 'tsm'}")
  if source == "tdn" and backbone != "tdn":
    raise ValueError(f"--source=tdn needs a TDN config, but config.model.backbone={backbone!r}: "
                     "add backbone=tdn to the config string")
  if source == "tsm" and backbone == "tdn":
    raise ValueError("--source=tsm converts TSM / TSN checkpoints, but "
                     "config.model.backbone='tdn': use backbone=tsm (or tsn), or --source=tdn "
                     "for a TDN checkpoint")
  if source == "tsm" and tdn_key:
    raise ValueError(f"{path} is a TDN checkpoint (key {tdn_key!r}): use --source=tdn with "
                     "backbone=tdn in the config")
  if source == "tdn" and not tdn_key:
    raise ValueError(f"{path} has no TDN modules (layerN_bak, conv1_5, resnext_layer1): use "
                     "--source=tsm for a TSM / TSN checkpoint or --source=torchvision for ImageNet")
  if backbone == "tsn" and shift_key:
    raise ValueError(f"{path} is a TSM checkpoint (shift wrapper key {shift_key!r}) but "
                     "config.model.backbone='tsn': use backbone=tsm")


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


def convert_checkpoint(source: str, path: str, config, workdir: str, *,
                       drop_classifier: bool = False) -> str:
  """Converts a PyTorch file into an Orbax checkpoint under `workdir`; returns its step directory.

  tsm / tdn -> WORKDIR/stage1/checkpoints/0: a stage-1 checkpoint that `main --mode=eval` evaluates
  and stage 2 compacts. torchvision -> WORKDIR/checkpoints/0: ImageNet backbone variables only, for
  `config.init_from` (its meta has no class count, so any dataset can start from it).
  """
  if source not in SOURCES:
    raise ValueError(f"--source={source!r} is not one of {SOURCES}")
  config = config_lib.validate(config.copy_and_resolve_references())
  with config.unlocked():
    config.stage = "1"
  imagenet = source == "torchvision"
  directory = os.path.join(workdir, "checkpoints") if imagenet else os.path.join(
      workdir, "stage1", "checkpoints")
  if os.path.isdir(directory) and any(s.isdigit() for s in os.listdir(directory)):
    raise ValueError(f"{directory} already holds checkpoints: convert into a new --workdir")
  state = load_state_dict(path)
  _check_source(state, source, config, path)
  origin = {"source": source, "file": os.path.abspath(path)}
  arch = checkpoints.architecture(config, "1")
  if imagenet:
    variables = imagenet_to_variables(state, config)
    arch = {k: arch[k] for k in ("stage", "backbone", "depth", "width")}
    meta = {"architecture": arch, "step": 0, "backbone_only": True, "converted_from": origin}
  else:
    variables, origin["classifier"] = video_checkpoint_to_variables(
        state, config, drop_classifier=drop_classifier, seed=config.train.seed)
    meta = {"architecture": arch, "step": 0, "converted_from": origin}
  checkpoints.write_variables(directory, 0, variables, meta)
  return os.path.join(directory, "0")


def _define_flags():
  """Defined only when run as a program: `aknet_jax.main` defines --config and --workdir too."""
  flags.DEFINE_enum("source", None, list(SOURCES),
                    "torchvision: an ImageNet ResNet file; tsm: an official TSM / TSN checkpoint; "
                    "tdn: an official TDN checkpoint.")
  flags.DEFINE_string("checkpoint", None, "The PyTorch file (.pth / .pth.tar).")
  flags.DEFINE_string("workdir", None, "Where the Orbax checkpoint goes (tsm/tdn: "
                      "stage1/checkpoints/0; torchvision: checkpoints/0).")
  flags.DEFINE_bool("drop_classifier", False,
                    "Replace the checkpoint's classifier by a fresh one for "
                    "config.dataset.num_classes.")
  config_flags.DEFINE_config_file("config", None,
                                  "Experiment config file[:string] the weights are for.",
                                  lock_config=True)


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  args = flags.FLAGS
  for name in ("source", "checkpoint", "config", "workdir"):
    if getattr(args, name) is None:
      cli.fail(f"--{name} is required (python -m aknet_jax.convert --help)")
  if not args["verbosity"].present:  # The result is one printed line; library INFO is noise here.
    logging.set_verbosity(logging.WARNING)
  step_dir = cli.call(convert_checkpoint, args.source, args.checkpoint, args.config, args.workdir,
                      drop_classifier=args.drop_classifier)
  if args.source == "torchvision":
    print(f"wrote {step_dir}: start stage 1 from it with init_from={args.workdir} in the config "
          "string")
  else:
    print(f"wrote {step_dir}: evaluate with python -m aknet_jax.main --workdir={args.workdir} "
          "--mode=eval, or build AK-Net with stage=2 in the config string")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)

"""Reading PyTorch files without running pickled code, and telling which kind of file it is.

torch is the `convert` extra, imported only here, to read the file with `weights_only=True`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from aknet_jax.checkpoints import tada_layout
from aknet_jax.checkpoints.torch_layout import canonical_key

SOURCES = ("torchvision", "tsm", "tdn", "tea", "tada2d")
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
    # 'model_state': official TAdaConv training checkpoints.
    nested = [k for k in ("state_dict", "model", "model_state") if isinstance(obj.get(k), Mapping)]
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


_TEA_KEY = re.compile(r"(^|\.)(me\.conv1|shifts\.\d+\.conv)\.")
# Backbones whose checkpoints only their own --source reads: (label, a key only their files have,
# the modules it names, sources that may still convert into the backbone).
_OWN_SOURCE = {"tada2d": ("TAda2D", tada_layout.KEY, "conv_branch.b_rf", ("torchvision",)),
               "tea": ("TEA", _TEA_KEY, "me, shifts", ())}  # torchvision: TEA is a Res2Net.


def _check_own_source(state: Mapping[str, Any], source: str, backbone: str, path: str):
  """check_source for TEA / TAda2D files (`_OWN_SOURCE`) and configs."""
  for name, (label, key, modules, allowed) in _OWN_SOURCE.items():
    found = next((k for k in state if key.search(k)), None)
    if source == name and backbone != name:
      raise ValueError(f"--source={name} needs a {label} config, but config.model.backbone="
                       f"{backbone!r}: add backbone={name} to the config string")
    if source == name and not found:
      raise ValueError(f"{path} has no {label} modules ({modules}): use --source=tsm for a TSM / "
                       "TSN checkpoint or --source=torchvision for ImageNet")
    if source != name and found:
      raise ValueError(f"{path} is a {label} checkpoint (key {found!r}): use --source={name} "
                       f"with backbone={name} in the config")
    if source != name and source not in allowed and backbone == name:
      raise ValueError(f"--source={source} does not convert to config.model.backbone={name!r}: "
                       f"use --source={name} for an official {label} checkpoint")


def check_source(state: Mapping[str, Any], source: str, config, path: str):
  """One-line errors for a file of another kind than --source, or a config of another backbone."""
  backbone = config.model.backbone
  _check_own_source(state, source, backbone, path)
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



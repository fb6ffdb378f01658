"""Official TAdaConv checkpoint keys and 3D/6D tensors -> the canonical torch names of our TAda2D.

The official `ResNet3D` (alibaba-mmai-research/TAdaConv) names the stem `backbone.conv1.a`,
stage S block B `backbone.conv{S+1}.res_{B+1}` with `short_cut(_bn)` and `conv_branch.{a, b, c}`
(+ `_bn`, `b_rf.*`, `b_avgpool_bn`), the classifier `head.out`; its convs are Conv3d with a unit
temporal axis, its TAdaConv2d base kernel (1, 1, O, I, kh, kw). Our canonical names are
torchvision's (`layer1.0.conv2.weight`, OIHW) plus `conv2_rf.*` (route function, Conv1d OIK) and
`bn2_avgpool`; the training script's `module.` prefix (DDP) is dropped.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

# A key only official TAda2D files have: the route function of a TAdaConv2d.
KEY = re.compile(r"(^|\.)conv_branch\.b_rf\.")
_BLOCK = re.compile(r"^backbone\.conv(\d)\.res_(\d+)\.(.+)$")
_BRANCH = {"a": "conv1", "a_bn": "bn1", "b": "conv2", "b_bn": "bn2", "b_avgpool_bn": "bn2_avgpool",
           "c": "conv3", "c_bn": "bn3", "b_rf": "conv2_rf"}
_SHORTCUT = {"short_cut": "downsample.0", "short_cut_bn": "downsample.1"}
_TOP = {"backbone.conv1.a.": "conv1.", "backbone.conv1.a_bn.": "bn1.", "head.out.": "new_fc."}


def canonical_name(key: str) -> str | None:
  """Official key -> canonical torch name; None for a key outside the TAda2D-ResNet layout."""
  if key.startswith("module."):
    key = key[len("module."):]
  for old, new in _TOP.items():
    if key.startswith(old):
      return new + key[len(old):]
  m = _BLOCK.match(key)
  if not m:
    return None
  stage, block, rest = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3)
  module, _, leaf = rest.partition(".")
  if module == "conv_branch":
    module, _, leaf = leaf.partition(".")
    module = _BRANCH.get(module)
  else:
    module = _SHORTCUT.get(module)
  if module is None or stage < 1 or block < 0:
    return None
  return f"layer{stage}.{block}.{module}.{leaf}"


def _tensor(name: str, value) -> Any:
  """Official 5D / 6D conv weights -> OIHW (2D convs) or OIK (the route function's 1D convs)."""
  shape = tuple(np.shape(value))
  if ".conv2_rf." in name and len(shape) == 5 and shape[3:] == (1, 1):
    return value.reshape(shape[:3])  # Conv3d (O, I, k, 1, 1) over time -> Conv1d (O, I, k).
  if name.endswith("conv2.weight") and len(shape) == 6 and shape[:2] == (1, 1):
    return value.reshape(shape[2:])  # TAdaConv2d's base kernel (1, 1, O, I, kh, kw).
  if len(shape) == 5 and shape[2] == 1:
    return value.reshape(shape[:2] + shape[3:])  # Conv3d (O, I, 1, kh, kw) -> OIHW.
  return value


def to_canonical(state: Mapping[str, Any]) -> dict:
  """An official TAda2D state dict (`model_state`) -> {canonical name: tensor in torch 2D/1D
  layout}; keys outside the layout are kept as they are (and reported by the reader)."""
  out = {}
  for key, value in state.items():
    name = canonical_name(key)
    out[key if name is None else name] = value if name is None else _tensor(name, value)
  return out

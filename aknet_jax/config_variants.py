"""Config strings: `configs/ssv2.py:backbone=tdn,stage=2` applies, left to right, the variants
the config file declares (a short, typed list per file); any other field is `--config.FIELD=VALUE`.
"""

from __future__ import annotations

import ml_collections


def frames_per_segment(backbone: str) -> int:
  """Frames the loader reads per segment: TDN takes 5 consecutive ones (its RGB-difference stem)."""
  return 5 if backbone == "tdn" else 1


def _coerce(value: str, current):
  """Parses a config-string value to the type of the field it replaces."""
  if isinstance(current, bool):
    low = value.lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"expected true/false, got {value!r}")
  if isinstance(current, (int, float)):
    return type(current)(value)
  if isinstance(current, tuple):
    return tuple(type(current[0])(v) if current else float(v) for v in value.split("+") if v)
  return value


# The lr/wd multipliers each backbone's official recipe uses ('tsm': TSM's first-conv/BN/fc policy).
LR_POLICIES = {
    "tdn": "uniform",
    "tada2d": "uniform",  # TAdaConv: lr x1 everywhere (its BN weight decay 0 is not modelled).
}


def set_backbone(c: ml_collections.ConfigDict, name: str):
  """`backbone=NAME`: the backbone and what its recipe changes with it: TDN reads 5 frames per
  segment and applies no lr/wd multipliers."""
  c.model.backbone = name
  c.dataset.frames_per_segment = frames_per_segment(name)
  c.train.lr_policy = LR_POLICIES.get(name, "tsm")


def set_image_size(c: ml_collections.ConfigDict, size: str):
  """`image_size=S`: the crop side, and the eval resize raised to at least S (it crops from it)."""
  c.dataset.image_size = int(size)
  c.dataset.resize_short = max(c.dataset.resize_short, c.dataset.image_size)


# The variants every dataset config declares: config-string key -> the field it sets (or a
# function (config, value) for a key that sets several). Any other field: --config.FIELD=VALUE.
MODEL_VARIANTS = {
    "backbone": set_backbone,
    "stage": "stage",
    "depth": "model.depth",
    "split": "model.aknet.split",
    "alpha": "model.aknet.alpha",
    "transform": "model.aknet.transform_mode",
    "rank": "model.aknet.transform_rank",
    "point_stride": "model.aknet.point_stride",
    "segments": "dataset.num_segments",
    "image_size": set_image_size,
    "train_augment": "dataset.train_augment",
    "init_from": "init_from",
    "data_dir": "dataset.data_dir",
    "bf16": "half_precision",
}


def _field(config: ml_collections.ConfigDict, path: str):
  *heads, leaf = path.split(".")
  parent = config
  for h in heads:
    parent = parent[h]
  return parent, leaf


def apply_variants(config: ml_collections.ConfigDict, arg: str | None,
                   variants: dict) -> ml_collections.ConfigDict:
  """Applies a config string `key=value,word,...` left to right with the variants a config file
  declares: a field path (the value takes the field's type), a function (config, value), or, for a
  bare word, a function (config)."""
  for item in (s.strip() for s in (arg or "").split(",")):
    if not item:
      continue
    key, _, value = (p.strip() for p in item.partition("="))
    target = variants.get(key)
    if target is None:
      raise ValueError(f"config string: unknown field {key!r}: this config's variants are "
                       f"{sorted(variants)}; set any other field with --config.FIELD=VALUE")
    if "=" not in item:
      if isinstance(target, str) or target.__code__.co_argcount != 1:
        raise ValueError(f"config string item {key!r} is not key=value")
      target(config)
    elif isinstance(target, str):
      parent, leaf = _field(config, target)
      try:
        parent[leaf] = _coerce(value, parent[leaf])
      except ValueError as e:
        raise ValueError(f"config string: bad value for {target}: {e}") from None
    else:
      target(config, value)
  return config

"""A checkpoint's architecture: the model factory's fields, recorded at save, compared at load.

Only the fields that set variable shapes (`models.SHAPE_FIELDS`) must agree; a checkpoint of
another architecture is a one-line error naming the config field, before any array is read.
"""

from __future__ import annotations

import ml_collections

from aknet_jax import models

# Checkpoints written before the factory recorded its kind named the schedule's stage instead.
_KIND_OF_STAGE = {"1": "video_net", "2": "aknet"}
# AK-Net metas record how the transform net's fc3 relates to A: "added" = A = I + fc3(z) (the
# identity is added in the forward). Metas without the key were written when fc3 predicted A itself.
TRANSFORM_IDENTITY = "added"


def record(config: ml_collections.ConfigDict, kind: str) -> dict:
  """What a checkpoint's meta stores as its architecture: `models.fields(config, kind)`, plus the
  transform net's format for AK-Net."""
  arch = models.fields(config, kind)
  if kind == "aknet":
    arch["transform_identity"] = TRANSFORM_IDENTITY
  return arch


def stores_transform_matrix(meta: dict, kind: str | None) -> bool:
  """True for an old-format AK-Net checkpoint (`kind`: what it holds when its meta says nothing)
  with the full transform: its fc3 predicts A itself (bias = I at init), so under A = I + fc3(z)
  it computes the same only once I is subtracted from that bias."""
  arch = meta.get("architecture", {})
  return ((kind_of(meta) or kind) == "aknet" and arch.get("transform_mode") == "full"
          and "transform_identity" not in arch)


def kind_of(meta: dict) -> str | None:
  """The model kind a checkpoint holds ('video_net', 'aknet', 'backbone'), None if unrecorded."""
  arch = meta.get("architecture", {})
  return arch.get("kind") or _KIND_OF_STAGE.get(str(arch.get("stage")))


def check(meta: dict, config: ml_collections.ConfigDict, kind: str | None, where: str) -> None:
  """ValueError naming the first shape-setting field where the checkpoint and the config differ.

  kind=None compares the fields the two share whatever the checkpoint's kind (a backbone-only
  ImageNet checkpoint as a start for stage 1).
  """
  have = meta.get("architecture", {})
  stored_kind = kind_of(meta)
  if kind is not None and stored_kind is not None and stored_kind != kind:
    raise ValueError(f"checkpoint {where} holds a {stored_kind!r} model but a {kind!r} one is "
                     "needed: pass another checkpoint (or the config string's stage= it was "
                     "trained at)")
  want = models.fields(config, kind or stored_kind or "backbone")
  paths = models.FIELD_PATHS[want["kind"]]
  for key in models.SHAPE_FIELDS:
    if key in want and key in have and have[key] != want[key]:
      raise ValueError(f"checkpoint {where} was written for {key}={have[key]!r} but the config has "
                       f"{paths[key]}={want[key]!r}: pass a matching --config (or another "
                       "checkpoint)")
  if stores_transform_matrix(meta, kind):
    raise ValueError(f"checkpoint {where} predates A = I + f in the transform net (its fc3 bias "
                     "holds I): eval, predict and export convert it on load; training cannot "
                     "resume it: start stage 2 again from stage 1 (move the workdir's stage2/ away)")

"""Checkpoints as model inputs: the variables of a checkpoint for eval / predict / export, and
the part of a checkpoint that starts a stage (`init_from`), each checked against the config."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aknet_jax import models, workdir as workdir_lib
from aknet_jax.checkpoints import architecture, trees, variables as step_files


def _latest_stage_checkpoints(workdir: str) -> str:
  for stage in ("2", "1"):
    directory = workdir_lib.checkpoint_dir(workdir, stage)
    if os.path.isdir(directory):
      return directory
  raise ValueError(f"no checkpoint in {workdir}: expected {workdir}/stage1/checkpoints or "
                   f"{workdir}/stage2/checkpoints (train first, or convert one with "
                   "python -m aknet_jax.convert)")


def load_model_variables(config: ml_collections.ConfigDict, workdir: str):
  """(kind, variables, meta, step) of config.eval.checkpoint, else of the workdir's latest stage
  (2, then 1), checked against the config: architecture fields first, then every array's shape.

  A checkpoint whose meta records no kind holds the model of the config's stage (AK-Net unless
  stage '1'). An old-format AK-Net checkpoint is converted (`upgrade_transform`) and so is its meta.
  """
  path = config.eval.checkpoint or _latest_stage_checkpoints(workdir)
  variables, meta, directory, step = step_files.load_variables(path)
  kind = architecture.kind_of(meta) or ("video_net" if str(config.stage) == "1" else "aknet")
  where = f"{directory}/{step}"
  variables, meta = upgrade_transform(variables, meta, kind)
  architecture.check(meta, config, kind, where)
  trees.check_fits(variables, models.variable_shapes(config, kind), where)
  return kind, variables, meta, step


def upgrade_transform(variables: dict, meta: dict, kind: str | None = None) -> tuple[dict, dict]:
  """(variables, meta) of a checkpoint in today's transform format, computing what it did.

  Old AK-Net checkpoints (`architecture.stores_transform_matrix`) hold A = fc3(z) with fc3's bias
  initialised to I; today A = I + fc3(z), so I is subtracted from that bias once and the meta
  records the new format. Any other checkpoint comes back unchanged.
  """
  if not architecture.stores_transform_matrix(meta, kind):
    return variables, meta
  fc3 = variables["params"]["transform"]["fc3"]
  bias = np.asarray(fc3["bias"])
  c3 = int(round(bias.size ** 0.5))  # fc3 predicts the (C+3) x (C+3) matrix, flattened row-major.
  new_fc3 = {**fc3, "bias": bias - np.eye(c3, dtype=bias.dtype).reshape(bias.shape)}
  transform = {**variables["params"]["transform"], "fc3": new_fc3}
  params = {**variables["params"], "transform": transform}
  arch = {**meta.get("architecture", {}), "transform_identity": architecture.TRANSFORM_IDENTITY}
  return {**variables, "params": params}, {**meta, "architecture": arch}


def merge_into(base, overlay, where: str):
  """`base` with every array that `overlay` also has replaced by overlay's (same path and shape):
  how a stage starts from a checkpoint holding part of its model (ImageNet weights, no classifier)."""
  flat_base = {trees.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(base)[0]}
  shared = {p: x for p, x in ((trees.path_name(p), x)
                              for p, x in jax.tree_util.tree_flatten_with_path(overlay)[0])
            if p in flat_base}
  trees.check_fits(shared, {p: flat_base[p] for p in shared}, where)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(shared[trees.path_name(p)], jnp.asarray(x).dtype)
      if trees.path_name(p) in shared else x, base)

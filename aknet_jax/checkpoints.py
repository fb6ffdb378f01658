"""Orbax checkpoints of a stage: periodic (keep N) and best-by-top-1, resumable exactly.

A checkpoint step holds three items, so that each reader takes only what it needs:
  `variables` {'params', 'batch_stats'}  — eval, stage-2 initialisation, converted PyTorch weights;
  `train`     {'opt_state', 'step'}      — resuming a run;
  `meta`      JSON: architecture, data position, step — checked before anything is restored.
Layout: STAGE_DIR/checkpoints/<step>/... and STAGE_DIR/best/<step>/...
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("variables", "train", "meta")


def architecture(config: ml_collections.ConfigDict, stage: str) -> dict:
  """The config fields a checkpoint's variables depend on: restoring into another one fails."""
  m, d = config.model, config.dataset
  arch = {"stage": stage, "backbone": m.backbone, "depth": int(m.depth), "width": int(m.width),
          "num_classes": int(d.num_classes), "num_segments": int(d.num_segments)}
  if stage == "2":
    arch.update(split=m.aknet.split, transform_mode=m.aknet.transform_mode,
                transform_rank=int(m.aknet.transform_rank))
  return arch


def check_architecture(meta: dict, config: ml_collections.ConfigDict, stage: str, where: str):
  """One-line ValueError naming the first field where the checkpoint and the config differ."""
  want = architecture(config, stage)
  have = meta.get("architecture", {})
  for key, value in want.items():
    if key in have and have[key] != value:
      field = {"stage": "stage", "num_classes": "dataset.num_classes",
               "num_segments": "dataset.num_segments", "split": "model.aknet.split",
               "transform_mode": "model.aknet.transform_mode",
               "transform_rank": "model.aknet.transform_rank"}.get(key, f"model.{key}")
      raise ValueError(f"checkpoint {where} was written for {key}={have[key]!r} but the config has "
                       f"{field}={value!r}: pass a matching --config (or another checkpoint)")


def _manager(directory: str, *, keep: int, best: bool, read_only: bool = False):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      best_fn=(lambda m: m["top1"]) if best else None, best_mode="max",
      keep_checkpoints_without_metrics=not best, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


class StageCheckpoints:
  """The periodic and the best checkpoint managers of one stage directory."""

  def __init__(self, stage_dir: str, keep: int = 3):
    self.stage_dir = stage_dir
    self.periodic = _manager(os.path.join(stage_dir, "checkpoints"), keep=keep, best=False)
    self.best = _manager(os.path.join(stage_dir, "best"), keep=1, best=True)

  def save(self, step: int, state, meta: dict, *, top1: float | None = None):
    """Saves the (unreplicated) state; with `top1`, also offers it to the best manager."""
    items = _args(state, meta)
    if step not in self.periodic.all_steps():
      self.periodic.save(step, args=items, force=True)
    if top1 is not None and step not in self.best.all_steps():
      self.best.save(step, args=items, metrics={"top1": float(top1)}, force=True)
    self.periodic.wait_until_finished()
    self.best.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.periodic.latest_step()

  def restore(self, step: int, state_template):
    """Restores (state, meta) at `step` into the structure of `state_template`."""
    variables_t = {"params": state_template.params, "batch_stats": state_template.batch_stats}
    train_t = {"opt_state": state_template.opt_state, "step": state_template.step}
    out = self.periodic.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(variables_t), train=ocp.args.StandardRestore(train_t),
        meta=ocp.args.JsonRestore()))
    state = state_template.replace(params=out.variables["params"],
                                   batch_stats=out.variables["batch_stats"],
                                   opt_state=out.train["opt_state"], step=out.train["step"])
    return state, dict(out.meta)

  def close(self):
    self.periodic.close()
    self.best.close()


def _args(state, meta):
  to_host = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
  return ocp.args.Composite(
      variables=ocp.args.StandardSave(to_host({"params": state.params,
                                               "batch_stats": state.batch_stats})),
      train=ocp.args.StandardSave(to_host({"opt_state": state.opt_state, "step": state.step})),
      meta=ocp.args.JsonSave(meta))


def write_variables(directory: str, step: int, variables: dict, meta: dict):
  """Writes a checkpoint holding only variables + meta (used by the PyTorch converter)."""
  mngr = _manager(directory, keep=1_000_000, best=False)
  mngr.save(step, args=ocp.args.Composite(
      variables=ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, variables)),
      meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()
  mngr.close()


def find_checkpoint(path: str) -> tuple[str, int]:
  """Resolves a stage dir, its checkpoints/ or best/ dir, or a step dir to (manager dir, step)."""
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  for sub in ("", "best", "checkpoints"):
    d = os.path.join(path, sub) if sub else path
    if os.path.isdir(d):
      steps = sorted(int(s) for s in os.listdir(d) if s.isdigit())
      if steps:
        return d, steps[-1]
  raise ValueError(f"no checkpoint found at {path}: expected a stage directory with checkpoints/<step>"
                   " or best/<step>, or a step directory (write one by training or with "
                   "python -m aknet_jax.convert)")


def read_variables(directory: str, step: int) -> tuple[dict, dict]:
  """Reads (variables, meta) of a checkpoint step as host arrays, without a template."""
  mngr = _manager(directory, keep=1_000_000, best=False, read_only=True)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types for unreadable or partial directories.
    raise ValueError(f"cannot read checkpoint {directory}/{step}: {type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}") from None
  finally:
    mngr.close()
  variables: Any = jax.tree_util.tree_map(np.asarray, out.variables)
  return variables, dict(out.meta)

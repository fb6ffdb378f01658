"""Checkpoint steps read as variables alone (eval, predict, init_from, compaction) and written
so (converted PyTorch weights): no training state, no template. Readers may run beside a training
job, so nothing here moves or deletes a step."""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from aknet_jax.checkpoints.integrity import (COMMIT_FILE, CorruptCheckpointError, first_line,
                                             tree_checksum, verify)

ITEMS = ("variables", "train", "meta")


def manager(directory: str, *, keep: int, best: bool, read_only: bool = False):
  """The Orbax manager of one directory of steps (periodic, or best-by-top-1 with `best`)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      best_fn=(lambda m: m["top1"]) if best else None, best_mode="max",
      keep_checkpoints_without_metrics=not best, enable_async_checkpointing=False,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def write_variables(directory: str, step: int, variables: dict, meta: dict):
  """Writes a checkpoint holding only variables + meta (used by the PyTorch converter)."""
  mngr = manager(directory, keep=1_000_000, best=False)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  meta = dict(meta, checksums={"variables": tree_checksum(variables)})
  mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
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
  """Reads (variables, meta) of a checkpoint step as host arrays, without a template.

  Raises CorruptCheckpointError (a ValueError) when the step cannot be read back intact.
  """
  where = f"{directory}/{step}"
  if not os.path.isdir(os.path.join(directory, str(step))):
    raise ValueError(f"no checkpoint {where}")
  if not os.path.exists(os.path.join(directory, str(step), COMMIT_FILE)):
    raise CorruptCheckpointError(f"cannot read checkpoint {where}: incomplete (no {COMMIT_FILE})")
  mngr = manager(directory, keep=1_000_000, best=False, read_only=True)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types for unreadable or partial directories.
    raise CorruptCheckpointError(f"cannot read checkpoint {where}: {first_line(e)}") from None
  finally:
    mngr.close()
  variables: Any = jax.tree_util.tree_map(np.asarray, out.variables)
  meta = dict(out.meta)
  verify(variables, meta, "variables", where)
  return variables, meta


def read_meta(path: str) -> dict:
  """The meta item of the checkpoint at `path` (resolved as `find_checkpoint` does), arrays unread."""
  directory, step = find_checkpoint(path)
  where = f"{directory}/{step}"
  if not os.path.exists(os.path.join(directory, str(step), COMMIT_FILE)):
    raise CorruptCheckpointError(f"cannot read checkpoint {where}: incomplete (no {COMMIT_FILE})")
  mngr = manager(directory, keep=1_000_000, best=False, read_only=True)
  try:
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(f"checkpoint {where}: meta unreadable ({first_line(e)})") from e
  finally:
    mngr.close()


def newest_intact(directory: str, steps: list[int], read: Callable[[int], Any]):
  """(read(step), step, [(damaged step, reason), ...]) for the first of `steps` (newest first)
  that `read` gets back without CorruptCheckpointError; nothing is moved here."""
  bad = []
  for step in steps:
    try:
      value = read(step)
    except CorruptCheckpointError as e:
      logging.warning("%s; trying the previous step", e)
      bad.append((step, str(e)))
      continue
    return value, step, bad
  raise CorruptCheckpointError(
      f"no readable checkpoint in {directory}: " + "; ".join(reason for _, reason in bad)
      + ". Move the directory aside to restart the stage from its beginning")


def load_variables(path: str) -> tuple[dict, dict, str, int]:
  """(variables, meta, manager dir, step) of `path` (resolved as `find_checkpoint` does).

  Given a directory of steps rather than one step, a damaged newest step is reported and the
  next older one is read (nothing is moved: readers may run beside a training job).
  """
  directory, step = find_checkpoint(path)
  if os.path.basename(os.path.abspath(path).rstrip("/")).isdigit():  # One step asked for.
    return (*read_variables(directory, step), directory, step)
  steps = sorted((int(s) for s in os.listdir(directory) if s.isdigit() and int(s) <= step),
                 reverse=True)
  (variables, meta), s, bad = newest_intact(directory, steps,
                                            lambda s: read_variables(directory, s))
  if bad:
    logging.warning("using checkpoint %s/%d instead of the damaged newer step(s)", directory, s)
  return variables, meta, directory, s

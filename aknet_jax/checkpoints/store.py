"""Orbax checkpoints of a stage: periodic (keep N) and best-by-top-1, resumable exactly.

A checkpoint step holds three items, so that each reader takes only what it needs:
  `variables` {'params', 'batch_stats'}  — eval, stage-2 initialisation, converted PyTorch weights;
  `train`     {'opt_state', 'step'}      — resuming a run;
  `meta`      JSON: architecture (the model factory's fields), data position, step, CRC32 of each
              array item — checked before anything is restored.
Layout: STAGE_DIR/checkpoints/<step>/... and STAGE_DIR/best/<step>/...

Faults (docs/reliability.md): a save cut short is reported and removed; a damaged step is moved
aside and the previous one used (`integrity`). A failed save raises `SaveError` before Orbax's
retention deletes anything, and a non-finite state is never written.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from aknet_jax.checkpoints import trees
from aknet_jax.checkpoints.integrity import (COMMIT_FILE, CorruptCheckpointError, SaveError,
                                             first_line, latest_good, move_aside, non_finite,
                                             partial_steps, tree_checksum, verify)

ITEMS = ("variables", "train", "meta")


def _manager(directory: str, *, keep: int, best: bool, read_only: bool = False):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      best_fn=(lambda m: m["top1"]) if best else None, best_mode="max",
      keep_checkpoints_without_metrics=not best, enable_async_checkpointing=False,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


class StageCheckpoints:
  """The periodic and the best checkpoint managers of one stage directory."""

  def __init__(self, stage_dir: str, keep: int = 3):
    self.stage_dir = stage_dir
    self.directory = os.path.join(stage_dir, "checkpoints")
    for d in (self.directory, os.path.join(stage_dir, "best")):
      for path in partial_steps(d):
        logging.warning("checkpoint %s is half-written (its save was interrupted): ignored and "
                        "removed; the complete steps are used", path)
    self.periodic = _manager(self.directory, keep=keep, best=False)
    self.best = _manager(os.path.join(stage_dir, "best"), keep=1, best=True)

  def save(self, step: int, state, meta: dict, *, top1: float | None = None):
    """Saves the (unreplicated) state; with `top1`, also offers it to the best manager.

    Refuses a state holding NaN/Inf (FloatingPointError); a failed write raises SaveError and
    leaves every step saved before in place (Orbax deletes old steps only after a good save).
    """
    bad = non_finite({"params": state.params, "batch_stats": state.batch_stats,
                       "opt_state": state.opt_state})
    if bad is not None:
      raise FloatingPointError(f"not saving step {step}: {bad} is not finite; "
                               + latest_good(self.latest_step(), self.directory))
    items = _args(state, meta)
    for mngr, kwargs in ((self.periodic, {}),
                         (self.best, {"metrics": {"top1": float(top1 or 0.0)}})):
      if (mngr is self.best and top1 is None) or step in mngr.all_steps():
        continue
      try:
        mngr.save(step, args=items, force=True, **kwargs)
        mngr.wait_until_finished()
      except Exception as e:  # Orbax and TensorStore raise many types for a failed write.
        raise SaveError(f"saving checkpoint {mngr.directory}/{step} failed ({first_line(e)}); "
                        f"the steps saved before, {list(self.periodic.all_steps())} in "
                        f"{self.directory}, are kept") from e

  def latest_step(self) -> int | None:
    return self.periodic.latest_step()

  def _read_meta(self, step: int) -> dict:
    return read_meta(os.path.join(self.directory, str(step)))

  def check_meta(self, step: int, check: Callable[[dict, str], None]):
    """Runs `check(meta, where)` on a step's meta, cheaply, before any model is built; a step
    whose meta is unreadable is left to `restore_latest`."""
    try:
      meta = self._read_meta(step)
    except CorruptCheckpointError:
      return
    check(meta, f"{self.directory}/{step}")

  def _check_shapes(self, step: int, templates: dict):
    """ValueError if the stored arrays do not fit the templates (another model, not damage)."""
    where = f"{self.directory}/{step}"
    for item, template in templates.items():
      path = os.path.join(self.directory, str(step), item)
      if not os.path.isdir(path):
        raise CorruptCheckpointError(f"checkpoint {where}: the {item} item is missing")
      try:
        with ocp.StandardCheckpointer() as reader:
          stored = reader.metadata(path).item_metadata
      except Exception as e:  # pylint: disable=broad-except
        raise CorruptCheckpointError(
            f"checkpoint {where}: {item} metadata unreadable ({first_line(e)})") from e
      if stored is None or not trees.shapes_by_path(stored):
        raise CorruptCheckpointError(f"checkpoint {where}: {item} metadata unreadable")
      trees.check_fits(stored, template, where, item)

  def restore(self, step: int, state_template):
    """Restores (state, meta) at `step` into the structure of `state_template`.

    Raises CorruptCheckpointError when the step cannot be read back intact.
    """
    meta = self._read_meta(step)
    return self._restore_arrays(step, state_template, meta), meta

  def _restore_arrays(self, step: int, state_template, meta: dict):
    where = f"{self.directory}/{step}"
    variables_t = {"params": state_template.params, "batch_stats": state_template.batch_stats}
    train_t = {"opt_state": state_template.opt_state, "step": state_template.step}
    self._check_shapes(step, {"variables": variables_t, "train": train_t})
    try:
      out = self.periodic.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(variables_t), train=ocp.args.StandardRestore(train_t)))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"checkpoint {where} unreadable ({first_line(e)})") from e
    verify(out.variables, meta, "variables", where)
    verify(out.train, meta, "train", where)
    return state_template.replace(params=out.variables["params"],
                                  batch_stats=out.variables["batch_stats"],
                                  opt_state=out.train["opt_state"], step=out.train["step"])

  def restore_latest(self, state_template,
                     check: Callable[[dict, str], None] | None = None) -> tuple[Any, dict, int]:
    """(state, meta, step) of the newest step that reads back intact.

    Damaged or incomplete steps are reported and renamed `<step>.corrupt` once an older step
    restores. `check(meta, where)` runs first on each step: its ValueError (a checkpoint of
    another configuration) is raised as is, never taken for damage.
    """
    def read(step):
      meta = self._read_meta(step)
      if check is not None:
        check(meta, f"{self.directory}/{step}")
      return self._restore_arrays(step, state_template, meta), meta

    # Training never writes step 0: there it is a converted checkpoint, a start, not a resume.
    steps = sorted((s for s in self.periodic.all_steps() if s > 0), reverse=True)
    (state, meta), step, bad = newest_intact(self.directory, steps, read)
    for b, reason in bad:
      moved = move_aside(os.path.join(self.directory, str(b)))
      logging.warning("skipped damaged checkpoint step %d (%s): moved to %s; resuming from step "
                      "%d", b, reason, moved, step)
    if bad:
      self.periodic.reload()
    return state, meta, step

  def close(self):
    self.periodic.close()
    self.best.close()


def _args(state, meta):
  to_host = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
  variables = to_host({"params": state.params, "batch_stats": state.batch_stats})
  train = to_host({"opt_state": state.opt_state, "step": state.step})
  meta = dict(meta, checksums={"variables": tree_checksum(variables), "train": tree_checksum(train)})
  return ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                            train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta))


def write_variables(directory: str, step: int, variables: dict, meta: dict):
  """Writes a checkpoint holding only variables + meta (used by the PyTorch converter)."""
  mngr = _manager(directory, keep=1_000_000, best=False)
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
  mngr = _manager(directory, keep=1_000_000, best=False, read_only=True)
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
  mngr = _manager(directory, keep=1_000_000, best=False, read_only=True)
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

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
from aknet_jax.checkpoints import variables as step_files
from aknet_jax.checkpoints.integrity import (CorruptCheckpointError, SaveError, first_line,
                                             latest_good, move_aside, non_finite, partial_steps,
                                             tree_checksum, verify)

ITEMS = step_files.ITEMS


class StageCheckpoints:
  """The periodic and the best checkpoint managers of one stage directory."""

  def __init__(self, stage_dir: str, keep: int = 3):
    self.stage_dir = stage_dir
    self.directory = os.path.join(stage_dir, "checkpoints")
    for d in (self.directory, os.path.join(stage_dir, "best")):
      for path in partial_steps(d):
        logging.warning("checkpoint %s is half-written (its save was interrupted): ignored and "
                        "removed; the complete steps are used", path)
    self.periodic = step_files.manager(self.directory, keep=keep, best=False)
    self.best = step_files.manager(os.path.join(stage_dir, "best"), keep=1, best=True)

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
    return step_files.read_meta(os.path.join(self.directory, str(step)))

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
    (state, meta), step, bad = step_files.newest_intact(self.directory, steps, read)
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

"""Runs one stage from a given start state to its last step: the pmapped step on the data, with
logging, checkpoints and evaluation on the config's cadence (clu periodic actions). What the stage
starts from is decided by `stages`; this loop only executes."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from aknet_jax import distributed, preemption
from aknet_jax.checkpoints import StageCheckpoints, latest_good
from aknet_jax.train import step as steps


@dataclasses.dataclass
class StageRun:
  """One stage as the schedule set it up."""
  stage: str
  config: ml_collections.ConfigDict
  state: Any  # steps.TrainState on the host, at step `start`.
  num_steps: int
  schedule: Callable[[int], Any]
  meta: dict  # Written with every checkpoint (architecture, lr decisions).
  train_iter: Any  # Batches from step start + 1 on.


def replicate(tree):
  """Replicates over the local devices with the same sharding the train step returns, so that its
  first call does not compile a second executable."""
  return jax.pmap(lambda x: x, axis_name=steps.AXIS)(flax.jax_utils.replicate(tree))


def run(job: StageRun, ckpts: StageCheckpoints, writer: metric_writers.MetricWriter,
        evaluate: Callable[[dict, int], dict], final_result: dict | None = None) -> dict:
  """Trains `job` to `num_steps`, then evaluates; returns the final eval metrics.

  `evaluate(replicated variables, step)` runs and reports an evaluation. `final_result`: metrics
  of the last step already recorded (a rerun after a kill during the final evaluation).
  """
  cfg, stage, num_steps = job.config, job.stage, job.num_steps
  t = cfg.train
  start = int(job.state.step)
  state = replicate(job.state)
  p_train = steps.pmapped_train_step(cfg, job.schedule)
  pending = []

  def check_finite():
    """Names the first step since the last check whose loss or gradient norm is NaN/Inf."""
    for s, m in pending:
      loss, grad_norm = float(m["loss"][0]), float(m["grad_norm"][0])
      if not (np.isfinite(loss) and np.isfinite(grad_norm)):
        raise FloatingPointError(
            f"stage {stage}: training loss is {loss} (gradient norm {grad_norm}) at step {s}; "
            + latest_good(ckpts.latest_step(), ckpts.directory))

  def save(step, top1=None):
    check_finite()  # A NaN state is never written: the latest checkpoint stays a good one.
    host_state = flax.jax_utils.unreplicate(state)
    # Orbax writes host arrays from process 0 only: every process must hold the same values.
    distributed.check_processes_agree(steps.variables_of(host_state),
                                      f"stage {stage} step {step} variables")
    ckpts.save(step, host_state, dict(job.meta, step=step, data_batches=step), top1=top1)

  def log(step):
    check_finite()
    summary = {f"train/{k}": float(np.mean([jax.device_get(m[k][0]) for _, m in pending]))
               for k in pending[0][1]}
    writer.write_scalars(step, summary)
    logging.info("stage %s step %d/%d  loss %.4f  top1 %.3f  lr %.2e", stage, step, num_steps,
                 summary["train/loss"], summary["train/top1"], summary["train/lr"])
    pending.clear()

  def evaluate_and_save(step):
    save(step, top1=evaluate(steps.variables_of(state), step)["top1"])

  def every(n, fn, last=True):
    """fn(step) every n steps (and at the last step only if `last`)."""
    return periodic_actions.PeriodicCallback(
        every_steps=n, callback_fn=lambda step, t: fn(step) if last or step != num_steps else None)

  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=t.log_every_steps, every_secs=None),
           every(t.log_every_steps, log), every(t.checkpoint_every_steps, save, last=False)]
  if t.eval_every_steps:
    hooks.append(every(t.eval_every_steps, evaluate_and_save, last=False))
  if t.profile_steps and jax.process_index() == 0:
    # A jax.profiler trace of `profile_steps` steps from the second step on (the first compiles),
    # into the stage's directory: TensorBoard's profile plugin opens it.
    hooks.append(periodic_actions.Profile(logdir=ckpts.stage_dir, num_profile_steps=t.profile_steps,
                                          profile_duration_ms=None, first_profile=start + 2,
                                          every_secs=None))
  for step in range(start + 1, num_steps + 1):
    state, metrics = p_train(state, next(job.train_iter))
    pending.append((step, metrics))
    for hook in hooks:
      hook(step)
    if pending and step == num_steps:
      log(step)
    if preemption.reached(step):  # SIGTERM / Ctrl-C: checkpoint this step and stop.
      save(step)
      writer.flush()
      raise preemption.Preempted(stage, step, ckpts.directory, preemption.signal_received())

  save(num_steps)  # Before evaluating: a kill during the evaluation loses no training.
  final = final_result or evaluate(steps.variables_of(state), num_steps)
  save(num_steps, top1=final["top1"])
  writer.flush()
  return final

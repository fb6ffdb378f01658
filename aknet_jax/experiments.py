"""What the seeded experiment tools share (sweep.py, ablate.py): one stage-1 run, stage-2 runs
started from it, their finished results, costs and latency measured together, CSV files.

  stage1_result(config, workdir)           the workdir's stage 1: recorded, evaluated or trained
  finetune(cfg, workdir, run_dir, steps)   a stage-2 run in run_dir from workdir's stage 1
  finished_result(run_dir, steps)          that run's metrics, if it finished `steps` steps
  measure_costs(specs, batch, reps)        MACs, parameters, interleaved latency of many models
"""

from __future__ import annotations

import csv
import os

import ml_collections
from absl import logging

from aknet_jax import cost, models, timing
from aknet_jax import workdir as workdir_lib


def measure_costs(specs: dict, batch: int, reps: int, warmup: int = 1) -> dict:
  """name -> {gmacs, params, params_inference, latency_ms{median,min,max}} for each
  (config, kind). All models are compiled first, then timed in the same interleaved rounds."""
  calls, out = {}, {}
  for i, (name, (cfg, kind)) in enumerate(specs.items()):
    shapes = models.variable_shapes(cfg, kind)
    variables = timing.random_variables(shapes, seed=i)
    frames = cost.random_frames(cfg, batch)
    compiled = cost.inference_fn(cfg, kind).lower(variables, frames).compile()
    calls[name] = lambda c=compiled, v=variables, x=frames: c(v, x)
    out[name] = cost.static_cost(cfg, kind, shapes)
    logging.info("compiled %s (%d/%d)", name, i + 1, len(specs))
  times = timing.time_interleaved(calls, reps, warmup)
  for name, seconds in times.items():
    out[name]["latency_ms"] = timing.latency_stats(seconds)
  return out


def stage1_result(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Metrics of the workdir's stage-1 checkpoint: from results.json, evaluated, or trained first."""
  from aknet_jax.train import stages  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  ckpt_dir = workdir_lib.checkpoint_dir(workdir, "1")
  cfg = config.copy_and_resolve_references()
  cfg.stage = "1"
  has_ckpt = os.path.isdir(ckpt_dir) and any(s.isdigit() for s in os.listdir(ckpt_dir))
  if not has_ckpt:
    logging.info("No stage-1 checkpoint in %s: training stage 1 first", workdir)
    return stages.train_and_evaluate(cfg, workdir)["stage1"]
  entry = workdir_lib.stage_result(workdir, "1")
  if entry and "top1" in entry:
    return entry
  cfg.eval.checkpoint = ckpt_dir
  return stages.evaluate_checkpoint(cfg, workdir)


def finetune(cfg: ml_collections.ConfigDict, workdir: str, run_dir: str,
             steps: int | None = None) -> dict:
  """A stage-2 run in `run_dir` from the workdir's stage-1 checkpoint; its metrics.

  With `steps`, a short fine-tune of that many steps (warmup at most a fifth of them, one
  checkpoint at the end, no intermediate evaluation); without, the config's own stage-2 schedule.
  A config with `train.stage2_from='init'` (the one-stage control) compacts stage 1's
  initialisation instead, so it is not pointed at the trained checkpoint.
  """
  from aknet_jax.train import stages  # pylint: disable=g-import-not-at-top
  cfg = cfg.copy_and_resolve_references()
  t = cfg.train
  cfg.stage = "2"
  if t.stage2_from != "init":
    cfg.init_from = os.path.abspath(workdir_lib.checkpoint_dir(workdir, "1"))
  if steps is not None:
    t.stage2_num_steps = steps
    t.warmup_steps = min(t.warmup_steps, steps // 5)
    t.checkpoint_every_steps, t.keep_checkpoints = steps, 1
    t.log_every_steps = min(t.log_every_steps, steps)
    t.eval_every_steps = 0
  return stages.train_and_evaluate(cfg, run_dir)["stage2"]


def finished_result(run_dir: str, steps: int) -> dict | None:
  """The stage-2 metrics of a run's earlier fine-tune of `steps` steps, if there is one."""
  entry = workdir_lib.stage_result(run_dir, "2", steps)
  return entry if entry and "top1" in entry else None


def write_csv(rows: list[dict], path: str, columns) -> None:
  """Writes `rows` (missing or None values as empty cells) atomically."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in columns})
  os.replace(tmp, path)

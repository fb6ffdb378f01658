"""The training loop: stage 1 (backbone), compaction, stage 2 (AK-Net), evaluation after each.

All side effects live here: checkpoints (Orbax), summaries (clu), results.json.
"""

from __future__ import annotations

import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from aknet_jax import checkpoints, config as config_lib, distributed, evaluate as eval_lib
from aknet_jax import models, optim, preemption
from aknet_jax import train_step as steps, visualize
from aknet_jax.data import pipeline

RESULTS = "results.json"


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """A copy of the config for one stage ('1' backbone, '2' AK-Net)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.stage = stage
  return cfg


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, f"stage{stage}")


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': '1'}: the config as TensorBoard hparams."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = str(v)
  return out


def _is_main() -> bool:
  return jax.process_index() == 0


def _merge_into(base, overlay):
  """Replaces the subtrees of `base` that `overlay` also has (same keys and shapes)."""
  if not isinstance(base, dict) or not isinstance(overlay, dict):
    if np.shape(base) != np.shape(overlay):
      raise ValueError(f"init_from: shape {np.shape(overlay)} does not fit {np.shape(base)}")
    return jnp.asarray(overlay, jnp.asarray(base).dtype)
  return {k: _merge_into(v, overlay[k]) if k in overlay else v for k, v in base.items()}


def _load_checkpoint_variables(path: str, config, stage: str):
  variables, meta, directory, step = checkpoints.load_variables(path)
  checkpoints.check_architecture(meta, config, stage, f"{directory}/{step}")
  return variables, meta


def initial_variables(config, workdir: str, stage: str, rng):
  """Fresh variables of a stage, initialised as the schedule says.

  Stage 1: random, or `config.init_from` (e.g. converted ImageNet weights) where it has them.
  Stage 2: compaction of the stage-1 variables from `config.init_from` (a stage-1 or converted
  TSM/TDN checkpoint) or, by default, the last stage-1 checkpoint in the workdir.
  """
  if stage == "1":
    fresh = flax.core.unfreeze(models.init_variables(config, rng))
    if not config.init_from:
      return fresh
    loaded, meta, directory, step = checkpoints.load_variables(config.init_from)
    if meta.get("architecture", {}).get("stage") == "1":
      checkpoints.check_architecture(meta, config, "1", config.init_from)
    logging.info("Stage 1 starts from %s/%s", directory, step)
    return _merge_into(fresh, loaded)
  source = config.init_from or os.path.join(stage_dir(workdir, "1"), "checkpoints")
  if not config.init_from and not os.path.isdir(source):
    raise ValueError(f"stage 2 needs a stage-1 checkpoint: none in {source}; run stage 1 "
                     "(config.stage='both') or set config.init_from to a stage-1 or converted checkpoint")
  stage1_cfg = stage_config(config, "1")
  loaded, _ = _load_checkpoint_variables(source, stage1_cfg, "1")
  logging.info("Stage 2 starts from the compaction of %s", source)
  return flax.core.unfreeze(models.compact(loaded, config, rng))


def classifier_is_new(config) -> bool:
  """Whether stage 1 starts its classifier from scratch: TSM's `fc_lr5` (×5 weight / ×10 bias lr).

  True without `init_from`, from a backbone-only (ImageNet) checkpoint, or from a converted one
  whose classifier was replaced (--drop_classifier); false from a trained classifier.
  """
  if not config.init_from:
    return True
  meta = checkpoints.read_meta(config.init_from)
  return bool(meta.get("backbone_only")) or (
      meta.get("converted_from", {}).get("classifier") == "fresh")


def _write_json(path: str, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def record_results(workdir: str, stage: str, config, metrics: dict, per_class: dict, step: int):
  """Writes the stage's entry of WORKDIR/results.json and its per_class_accuracy.json."""
  if not _is_main():
    return
  entry = {k: metrics[k] for k in metrics}
  entry.update(gmacs=models.gmacs(config), params=models.param_count(config), step=int(step))
  path = os.path.join(workdir, RESULTS)
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  results[f"stage{stage}"] = entry
  _write_json(path, results)
  os.makedirs(stage_dir(workdir, stage), exist_ok=True)
  _write_json(os.path.join(stage_dir(workdir, stage), "per_class_accuracy.json"), per_class)
  logging.info("stage %s results: %s", stage, json.dumps(entry, sort_keys=True))


def run_evaluation(config, workdir: str, stage: str, model, variables_repl, step: int, writer):
  """Evaluates replicated variables; writes scalars, keypoint images and the results files."""
  with_kp = stage == "2"
  p_eval = steps.pmapped_eval_step(model, with_keypoints=with_kp)
  t0 = time.time()
  res = eval_lib.evaluate(config, p_eval, variables_repl,
                          feature_stride=models.feature_stride(config) if with_kp else None,
                          num_images=config.eval.num_keypoint_images if with_kp else 0)
  logging.info("stage %s eval at step %d: %s (%.1fs)", stage, step,
               {k: round(v, 4) for k, v in res.metrics.items()}, time.time() - t0)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in res.metrics.items()})
  if res.images and _is_main():
    grids = visualize.save_keypoint_clips(
        os.path.join(stage_dir(workdir, stage), "keypoints"),
        [(f, xyt) for f, xyt, _, _ in res.images], models.feature_stride(config),
        config.dataset.frames_per_segment,
        [f"label {lab}, predicted {pred}" for _, _, lab, pred in res.images])
    writer.write_images(step, {"eval/keypoints": np.stack(grids)})
  record_results(workdir, stage, config, res.metrics, res.per_class, step)
  return res


def train_stage(config, workdir: str, stage: str) -> dict:
  """Trains one stage to its step count (resuming from its latest checkpoint) and evaluates."""
  cfg = stage_config(config, stage)
  sdir = stage_dir(workdir, stage)
  n_train = pipeline.num_examples(cfg, cfg.dataset.train_split)
  num_steps = optim.stage_num_steps(cfg, n_train, stage)
  model = models.build(cfg, bn_axis_name=steps.AXIS)
  rng = jax.random.PRNGKey(cfg.train.seed + int(stage))
  ckpts = checkpoints.StageCheckpoints(sdir, keep=cfg.train.keep_checkpoints)
  latest = ckpts.latest_step()
  if stage == "1" and latest == 0:
    # Training never saves step 0: it is a converted PyTorch checkpoint, where stage 1 starts.
    cfg.init_from, latest = os.path.join(sdir, "checkpoints", "0"), None
  resumed_meta = {}

  def check(meta, where):
    checkpoints.check_architecture(meta, cfg, stage, where)
    resumed_meta.update(meta)

  if latest is not None:
    ckpts.check_meta(latest, check)  # Fails at once for another config, before any model init.
  # Stage 2 builds from stage 1 only when it has no checkpoint of its own to resume.
  variables = (initial_variables(cfg, workdir, stage, rng) if latest is None
               else flax.core.unfreeze(models.init_variables(cfg, rng)))
  new_classifier = resumed_meta.get("new_classifier")
  if new_classifier is None:
    new_classifier = stage == "1" and classifier_is_new(cfg)
  tx, schedule = optim.create_optimizer(cfg, variables["params"], num_steps,
                                        new_classifier=new_classifier)
  state = steps.create_state(model, variables, tx)
  arch = checkpoints.architecture(cfg, stage)
  if latest is not None:
    # The newest step that reads back intact; damaged ones are reported and moved aside.
    state, _, latest = ckpts.restore_latest(state, check)
    logging.info("Resuming stage %s from step %d", stage, latest)
  start = int(state.step)

  writer = metric_writers.create_default_writer(sdir, just_logging=not _is_main())
  if start == 0:
    writer.write_hparams(_flatten(cfg.to_dict()))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  logging.info("Stage %s: %s, %d params, %d steps (%.1f epochs of %d clips), batch %d on %d devices",
               stage, "AK-Net" if stage == "2" else cfg.model.backbone.upper(), n_params, num_steps,
               num_steps / optim.steps_per_epoch(cfg, n_train), n_train, cfg.train.batch_size,
               jax.device_count())

  state = _replicate(state)
  p_train = steps.pmapped_train_step(cfg, schedule)
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  train_iter = pipeline.create_train_iterator(cfg, start_batch=start)
  pending, t_log = [], time.time()

  def check_finite():
    """Names the first step since the last check whose loss or gradient norm is NaN/Inf."""
    for s, m in pending:
      loss, grad_norm = float(m["loss"][0]), float(m["grad_norm"][0])
      if not (np.isfinite(loss) and np.isfinite(grad_norm)):
        raise FloatingPointError(
            f"stage {stage}: training loss is {loss} (gradient norm {grad_norm}) at step {s}; "
            + checkpoints.latest_good(ckpts.latest_step(), ckpts.directory))

  def save(step, top1=None):
    check_finite()  # A NaN state is never written: the latest checkpoint stays a good one.
    host_state = flax.jax_utils.unreplicate(state)
    # Orbax writes host arrays from process 0 only: every process must hold the same values.
    distributed.check_processes_agree(steps.variables_of(host_state),
                                      f"stage {stage} step {step} variables")
    ckpts.save(step, host_state, {"architecture": arch, "step": step, "data_batches": step,
                                  "new_classifier": new_classifier}, top1=top1)

  for step in range(start + 1, num_steps + 1):
    batch = next(train_iter)
    state, metrics = p_train(state, batch)
    pending.append((step, metrics))
    report(step)
    if step % cfg.train.log_every_steps == 0 or step == num_steps:
      check_finite()
      summary = {f"train/{k}": float(np.mean([jax.device_get(m[k][0]) for _, m in pending]))
                 for k in pending[0][1]}
      writer.write_scalars(step, summary)
      rate = len(pending) / max(time.time() - t_log, 1e-9)
      eta = (num_steps - step) / max(rate, 1e-9)
      logging.info("stage %s step %d/%d  loss %.4f  top1 %.3f  lr %.2e  %.2f steps/s  ETA %dm%02ds",
                   stage, step, num_steps, summary["train/loss"], summary["train/top1"],
                   summary["train/lr"], rate, eta // 60, eta % 60)
      pending, t_log = [], time.time()
    if step % cfg.train.checkpoint_every_steps == 0 and step != num_steps:
      save(step)
    if cfg.train.eval_every_steps and step % cfg.train.eval_every_steps == 0 and step != num_steps:
      res = run_evaluation(cfg, workdir, stage, model, steps.variables_of(state), step, writer)
      save(step, top1=res.metrics["top1"])
    if preemption.reached(step):  # SIGTERM / Ctrl-C: checkpoint this step and stop.
      save(step)
      writer.flush()
      raise preemption.Preempted(stage, step, ckpts.directory, preemption.signal_received())

  save(num_steps)  # Before evaluating: a kill during the evaluation loses no training.
  final = _existing_result(workdir, stage, num_steps)
  if final is None:
    res = run_evaluation(cfg, workdir, stage, model, steps.variables_of(state), num_steps, writer)
    final = res.metrics
  save(num_steps, top1=final["top1"])
  writer.flush()
  ckpts.close()
  if config.stage == "both" and stage == "1" and preemption.requested():
    # Noticed during the evaluation: stage 1 is complete; stop before stage 2 starts.
    raise preemption.Preempted(stage, num_steps, ckpts.directory, preemption.signal_received())
  return final


def _existing_result(workdir: str, stage: str, step: int):
  path = os.path.join(workdir, RESULTS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    entry = json.load(f).get(f"stage{stage}")
  return entry if entry and entry.get("step") == step else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured stage(s); returns {'stage1': metrics, 'stage2': metrics}."""
  config_lib.validate(config)
  _check_batch(config)
  os.makedirs(workdir, exist_ok=True)
  stages = ("1", "2") if config.stage == "both" else (str(config.stage),)
  with preemption.notice():
    return {f"stage{s}": train_stage(config, workdir, s) for s in stages}


def _replicate(tree):
  """Replicates over the local devices with the same sharding the train step returns, so that its
  first call does not compile a second executable."""
  return jax.pmap(lambda x: x, axis_name=steps.AXIS)(flax.jax_utils.replicate(tree))


def _check_batch(config):
  n = jax.device_count()
  for field, b in (("train.batch_size", config.train.batch_size),
                   ("eval.batch_size", config.eval.batch_size)):
    if b % n:
      raise ValueError(f"config.{field}={b} does not divide by the {n} devices: use a multiple of {n}")


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """(stage config, stage, variables, meta, step) of config.eval.checkpoint, else of the
  workdir's latest stage (2, then 1), checked against the config's architecture."""
  path = config.eval.checkpoint
  if not path:
    for stage in ("2", "1"):
      if os.path.isdir(os.path.join(stage_dir(workdir, stage), "checkpoints")):
        path = os.path.join(stage_dir(workdir, stage), "checkpoints")
        break
    else:
      raise ValueError(f"no checkpoint in {workdir}: expected {workdir}/stage1/checkpoints or "
                       f"{workdir}/stage2/checkpoints (train first, or convert one with "
                       "python -m aknet_jax.convert)")
  variables, meta, directory, step = checkpoints.load_variables(path)
  stage = str(meta.get("architecture", {}).get("stage", "1" if config.stage == "1" else "2"))
  cfg = stage_config(config, stage)
  checkpoints.check_architecture(meta, cfg, stage, f"{directory}/{step}")
  expected = jax.eval_shape(lambda: models.init_variables(cfg, jax.random.PRNGKey(0)))
  _check_tree(variables, flax.core.unfreeze(expected), f"{directory}/{step}")
  return cfg, stage, variables, meta, step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: evaluates a checkpoint (config.eval.checkpoint, else the workdir's latest stage)."""
  config_lib.validate(config)
  _check_batch(config)
  cfg, stage, variables, meta, step = load_checkpoint(config, workdir)
  model = models.build(cfg)
  writer = metric_writers.create_default_writer(os.path.join(stage_dir(workdir, stage), "eval"),
                                                just_logging=not _is_main())
  repl = flax.jax_utils.replicate(variables)
  res = run_evaluation(cfg, workdir, stage, model, repl, int(meta.get("step", step)), writer)
  writer.flush()
  return res.metrics


def _check_tree(have, want, where: str, path: str = ""):
  """One-line error at the first variable the checkpoint lacks or holds with another shape."""
  if isinstance(want, dict):
    if not isinstance(have, dict):
      raise ValueError(f"checkpoint {where}: {path or 'variables'} is not a tree of variables")
    for k, v in want.items():
      if k not in have:
        raise ValueError(f"checkpoint {where} lacks {path}/{k} that the config's model needs: "
                         "it was written for another architecture")
      _check_tree(have[k], v, where, f"{path}/{k}")
  elif tuple(np.shape(have)) != tuple(want.shape):
    raise ValueError(f"checkpoint {where}: {path} has shape {tuple(np.shape(have))}, the config's "
                     f"model needs {tuple(want.shape)}")

"""The two-stage schedule: what each stage starts from, then `loop.run` to its last step.

Stage 1 trains the plain classifier ('video_net'); stage 2 builds AK-Net from it by compaction and
fine-tunes it. A stage starts from, in this order: its own latest checkpoint (resume), a converted
PyTorch checkpoint at step 0 of its directory, `config.init_from`, stage 1's checkpoints
(compaction, stage 2), or a fresh init.
"""

from __future__ import annotations

import os

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from aknet_jax import config as config_lib, models, preemption, workdir as workdir_lib
from aknet_jax.checkpoints import StageCheckpoints, architecture, load_variables, read_meta
from aknet_jax.checkpoints import restore
from aknet_jax.data import pipeline
from aknet_jax.train import evaluate as eval_lib, loop, optim, step as steps


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': '1'}: the config as TensorBoard hparams."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = str(v)
  return out


def initial_variables(config, workdir: str, stage: str, rng):
  """Fresh variables of a stage that has no checkpoint of its own, as the schedule says.

  Stage 1: random, or `config.init_from` (e.g. converted ImageNet weights) where it has them.
  Stage 2: compaction of the stage-1 variables from `config.init_from` (a stage-1 or converted
  TSM/TDN checkpoint) or, by default, the last stage-1 checkpoint in the workdir.
  """
  kind = workdir_lib.STAGE_KINDS[stage]
  if stage == "1":
    fresh = flax.core.unfreeze(models.init_variables(config, kind, rng))
    if not config.init_from:
      return fresh
    loaded, meta, directory, step = load_variables(config.init_from)
    if architecture.kind_of(meta) in ("video_net", "backbone"):
      architecture.check(meta, config, None, config.init_from)
    logging.info("Stage 1 starts from %s/%s", directory, step)
    return restore.merge_into(fresh, loaded, f"{directory}/{step}")
  if config.train.stage2_from == "init":
    logging.info("Stage 2 starts from the compaction of stage 1's initialisation (one-stage "
                 "control, train.stage2_from='init')")
    stage1_rng = jax.random.PRNGKey(config.train.seed + 1)  # The key stage 1 initialises with.
    return flax.core.unfreeze(models.compact(initial_variables(config, workdir, "1", stage1_rng),
                                             config, rng))
  source = config.init_from or workdir_lib.checkpoint_dir(workdir, "1")
  if not config.init_from and not os.path.isdir(source):
    raise ValueError(f"stage 2 needs a stage-1 checkpoint: none in {source}; run stage 1 "
                     "(config.stage='both') or set config.init_from to a stage-1 or converted checkpoint")
  loaded, meta, directory, step = load_variables(source)
  architecture.check(meta, config, "video_net", f"{directory}/{step}")
  logging.info("Stage 2 starts from the compaction of %s", source)
  return flax.core.unfreeze(models.compact(loaded, config, rng))


def classifier_is_new(config) -> bool:
  """Whether stage 1 starts its classifier from scratch: TSM's `fc_lr5` (×5 weight / ×10 bias lr).

  True without `init_from`, from a backbone-only (ImageNet) checkpoint, or from a converted one
  whose classifier was replaced (--drop_classifier); false from a trained classifier.
  """
  if not config.init_from:
    return True
  meta = read_meta(config.init_from)
  return bool(meta.get("backbone_only")) or (
      meta.get("converted_from", {}).get("classifier") == "fresh")


def train_stage(config, workdir: str, stage: str) -> dict:
  """Trains one stage to its step count (resuming from its latest checkpoint) and evaluates."""
  cfg = config.copy_and_resolve_references()
  kind = workdir_lib.STAGE_KINDS[stage]
  sdir = workdir_lib.stage_dir(workdir, stage)
  n_train = pipeline.num_examples(cfg, cfg.dataset.train_split)
  num_steps = optim.stage_num_steps(cfg, n_train, stage)
  model = models.build(cfg, kind, bn_axis_name=steps.AXIS)
  rng = jax.random.PRNGKey(cfg.train.seed + int(stage))
  ckpts = StageCheckpoints(sdir, keep=cfg.train.keep_checkpoints)
  latest = ckpts.latest_step()
  if stage == "1" and latest == 0:
    # Training never saves step 0: it is a converted PyTorch checkpoint, where stage 1 starts.
    with cfg.unlocked():
      cfg.init_from = os.path.join(workdir_lib.checkpoint_dir(workdir, stage), "0")
    latest = None
  resumed_meta = {}

  def check(meta, where):
    architecture.check(meta, cfg, kind, where)
    resumed_meta.update(meta)

  if latest is not None:
    ckpts.check_meta(latest, check)  # Fails at once for another config, before any model init.
  # Stage 2 builds from stage 1 only when it has no checkpoint of its own to resume.
  variables = (initial_variables(cfg, workdir, stage, rng) if latest is None
               else flax.core.unfreeze(models.init_variables(cfg, kind, rng)))
  new_classifier = resumed_meta.get("new_classifier")
  if new_classifier is None:
    new_classifier = stage == "1" and classifier_is_new(cfg)
  tx, schedule = optim.create_optimizer(cfg, variables["params"], num_steps,
                                        new_classifier=new_classifier)
  state = steps.create_state(model, variables, tx)
  if latest is not None:
    # The newest step that reads back intact; damaged ones are reported and moved aside.
    state, _, latest = ckpts.restore_latest(state, check)
    logging.info("Resuming stage %s from step %d", stage, latest)
  start = int(state.step)

  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(sdir, just_logging=not is_main)
  if start == 0:
    writer.write_hparams(_flatten(cfg.to_dict()))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  label = "AK-Net" if kind == "aknet" else models.display_name(cfg.model.backbone)
  logging.info("Stage %s: %s, %d params, %d steps (%.1f epochs of %d clips), batch %d on %d devices",
               stage, label, n_params, num_steps, num_steps / optim.steps_per_epoch(cfg, n_train),
               n_train, cfg.train.batch_size, jax.device_count())
  names = pipeline.class_names(cfg)
  eval_model = models.build(cfg, kind)

  def evaluate(variables_repl, step):
    return eval_lib.evaluate_and_report(cfg, workdir, stage, kind, eval_model, variables_repl,
                                        step, writer, names).metrics

  job = loop.StageRun(stage=stage, config=cfg, state=state, num_steps=num_steps,
                      schedule=schedule, train_iter=pipeline.create_train_iterator(
                          cfg, start_batch=start),
                      meta={"architecture": architecture.record(cfg, kind),
                            "new_classifier": new_classifier})
  final = loop.run(job, ckpts, writer, evaluate,
                   final_result=workdir_lib.stage_result(workdir, stage, num_steps))
  ckpts.close()
  if config.stage == "both" and stage == "1" and preemption.requested():
    # Noticed during the evaluation: stage 1 is complete; stop before stage 2 starts.
    raise preemption.Preempted(stage, num_steps, ckpts.directory, preemption.signal_received())
  return final


def check_batch(config):
  """The global batch sizes must split evenly over the devices (and micro-batches); logs the
  linear lr rule when the batch is not the recipe's."""
  n, t = jax.device_count(), config.train
  for field, b in (("train.batch_size", t.batch_size), ("eval.batch_size", config.eval.batch_size)):
    if b % n:
      raise ValueError(f"config.{field}={b} does not divide by the {n} devices: use a multiple of {n}")
  if (t.batch_size // n) % t.grad_accum_steps:
    raise ValueError(f"config.train.grad_accum_steps={t.grad_accum_steps} does not divide the "
                     f"{t.batch_size // n} clips per device (train.batch_size={t.batch_size} on "
                     f"{n} devices)")
  if t.batch_size != t.recipe_batch_size:
    logging.info("Global batch %d, the recipe's is %d: the linear rule gives lr %.3g x %d / %d = "
                 "%.3g; %s (train.scale_lr_with_batch=%s)", t.batch_size, t.recipe_batch_size,
                 t.learning_rate, t.batch_size, t.recipe_batch_size,
                 t.learning_rate * t.batch_size / t.recipe_batch_size,
                 "applied" if t.scale_lr_with_batch else "not applied, lr stays "
                 f"{t.learning_rate:.3g}", t.scale_lr_with_batch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured stage(s); returns {'stage1': metrics, 'stage2': metrics}."""
  config_lib.validate(config)
  check_batch(config)
  os.makedirs(workdir, exist_ok=True)
  stage_list = workdir_lib.STAGES if config.stage == "both" else (str(config.stage),)
  with preemption.notice():
    return {f"stage{s}": train_stage(config, workdir, s) for s in stage_list}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: evaluates a checkpoint (config.eval.checkpoint, else the workdir's latest stage)."""
  config_lib.validate(config)
  check_batch(config)
  kind, variables, meta, step = restore.load_model_variables(config, workdir)
  stage = workdir_lib.stage_of_kind(kind)
  writer = metric_writers.create_default_writer(
      os.path.join(workdir_lib.stage_dir(workdir, stage), "eval"),
      just_logging=jax.process_index() != 0)
  res = eval_lib.evaluate_and_report(config, workdir, stage, kind, models.build(config, kind),
                                     flax.jax_utils.replicate(variables),
                                     int(meta.get("step", step)), writer,
                                     pipeline.class_names(config))
  writer.flush()
  return res.metrics

"""Training and evaluation: loss goes down, pmap = 1 device, eval covers each example once, resume."""

import json
import os
import subprocess
import sys
import textwrap

import flax
import jax
import numpy as np
import pytest

from aknet_jax import checkpoints, models
from aknet_jax.checkpoints import architecture
from aknet_jax.train import evaluate, optim, stages, step as steps
from aknet_jax.workdir import STAGE_KINDS
from aknet_jax.data import pipeline
from conftest import ROOT, load_config


def _state(cfg, num_steps=10):
  kind = STAGE_KINDS[cfg.stage]
  model = models.build(cfg, kind, bn_axis_name=steps.AXIS)
  variables = models.init_variables(cfg, kind, jax.random.PRNGKey(0))
  tx, schedule = optim.create_optimizer(cfg, variables["params"], num_steps)
  return model, steps.create_state(model, variables, tx), schedule


@pytest.mark.parametrize("stage", ["1", "2"])
def test_train_steps_lower_the_loss_on_a_fixed_batch(stage):
  cfg = load_config("synthetic", f"tiny,stage={stage},dropout=0")
  _, state, schedule = _state(cfg)
  p_train = steps.pmapped_train_step(cfg, schedule)
  rng = np.random.default_rng(0)
  d = cfg.dataset
  batch = {"frames": rng.normal(size=(1, 4, d.num_segments, d.image_size, d.image_size, 3)).astype(np.float32),
           "label": np.array([[0, 1, 2, 3]], np.int32)}
  state = flax.jax_utils.replicate(state)
  losses = []
  for _ in range(6):
    state, metrics = p_train(state, batch)
    losses.append(float(metrics["loss"][0]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] * 0.9, losses
  if stage == "2":
    assert {"ce", "aux_ce", "r_e"} <= set(metrics)


@pytest.mark.slow
def test_pmap_over_two_devices_equals_one_device_with_the_same_global_batch():
  script = textwrap.dedent(f"""
      import os, sys
      os.environ["JAX_NUM_CPU_DEVICES"] = "2"
      sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      import functools, flax, jax, numpy as np
      from aknet_jax import models
      from aknet_jax.train import optim, step as steps
      from conftest import load_config
      cfg = load_config("synthetic", "tiny,stage=2,dropout=0")
      model = models.build(cfg, 'aknet', bn_axis_name=steps.AXIS)
      variables = models.init_variables(cfg, 'aknet', jax.random.PRNGKey(0))
      tx, schedule = optim.create_optimizer(cfg, variables["params"], 10)
      state = steps.create_state(model, variables, tx)
      d = cfg.dataset
      rng = np.random.default_rng(0)
      frames = rng.normal(size=(4, d.num_segments, d.image_size, d.image_size, 3)).astype(np.float32)
      labels = np.arange(4, dtype=np.int32)
      fn = functools.partial(steps.train_step, config=cfg, schedule=schedule)
      out = []
      for n in (1, 2):
        p = jax.pmap(fn, axis_name=steps.AXIS, devices=jax.devices()[:n])
        s = flax.jax_utils.replicate(state, devices=jax.devices()[:n])
        for _ in range(2):
          s, _ = p(s, {{"frames": frames.reshape((n, 4 // n) + frames.shape[1:]),
                       "label": labels.reshape(n, 4 // n)}})
        out.append(jax.tree_util.tree_map(lambda x: np.asarray(x[0]), (s.params, s.batch_stats)))
        if n == 2:
          same = jax.tree_util.tree_map(lambda x: np.array_equal(np.asarray(x[0]), np.asarray(x[1])), s.params)
          assert all(jax.tree_util.tree_leaves(same)), "replicas diverged"
      # Relative to each leaf's scale, floored at 1e-2: a bias right before a BatchNorm (the
      # transform net's) has a zero gradient up to rounding, so its value is rounding noise.
      err = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-2)), *out)
      worst = max(jax.tree_util.tree_leaves(err))
      print("worst relative difference", worst)
      assert worst < 1e-4, worst
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def test_eval_counts_every_example_exactly_once(tiny_data_dir):
  cfg = load_config("synthetic", f"tiny,stage=1,data_dir={tiny_data_dir}")
  with cfg.unlocked():
    cfg.eval.batch_size = 3  # Does not divide the split: the last batch is padded and masked.
  model = models.build(cfg, "video_net")
  variables = flax.jax_utils.replicate(models.init_variables(cfg, "video_net", jax.random.PRNGKey(0)))
  res = evaluate.evaluate(cfg, steps.pmapped_eval_step(model), variables)
  n = pipeline.num_examples(cfg, cfg.dataset.eval_split)
  assert n % 3 != 0
  assert sorted(res.indices) == list(range(n))
  assert res.metrics["num_examples"] == n
  assert sum(c["num_examples"] for c in res.per_class.values()) == n


def _final_params(workdir):
  directory, step = checkpoints.find_checkpoint(os.path.join(workdir, "stage1", "checkpoints"))
  variables, meta = checkpoints.read_variables(directory, step)
  return step, variables


def test_resume_continues_from_the_saved_step_with_identical_results(tiny_data_dir, tmp_path,
                                                                     monkeypatch):
  cfg = load_config("synthetic", f"tiny,stage=1,data_dir={tiny_data_dir}")
  stages.train_and_evaluate(cfg, str(tmp_path / "straight"))

  real = pipeline.create_train_iterator
  seen = []

  def interrupted(config, *, start_batch=0, **kw):
    seen.append(start_batch)
    it = real(config, start_batch=start_batch, **kw)
    for i, batch in enumerate(it):
      if start_batch == 0 and i == 3:  # Dies after the step-2 checkpoint, during step 4.
        raise KeyboardInterrupt
      yield batch

  monkeypatch.setattr(pipeline, "create_train_iterator", interrupted)
  with pytest.raises(KeyboardInterrupt):
    stages.train_and_evaluate(cfg, str(tmp_path / "resumed"))
  # The classifier's lr multipliers are those the run started with (stored in the checkpoint):
  # resuming needs no init_from checkpoint any more, even a vanished one.
  with cfg.unlocked():
    cfg.init_from = str(tmp_path / "deleted_imagenet_weights")
  stages.train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert seen == [0, 2]  # The second run resumed at the step-2 checkpoint's data position.
  step_a, a = _final_params(str(tmp_path / "straight"))
  step_b, b = _final_params(str(tmp_path / "resumed"))
  assert step_a == step_b == cfg.train.num_steps
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  with open(tmp_path / "resumed" / "results.json") as f:
    assert json.load(f)["stage1"]["step"] == cfg.train.num_steps


@pytest.mark.slow
def test_both_stages_from_the_command_line_then_eval_in_a_new_process(tiny_data_dir, tmp_path):
  workdir, cache = str(tmp_path / "run"), tmp_path / "xla_cache"
  cmd = [sys.executable, "-m", "aknet_jax.main", f"--config=configs/synthetic.py:tiny,data_dir={tiny_data_dir}",
         f"--workdir={workdir}", f"--compilation_cache_dir={cache}"]
  # The suite's shared cache ($JAX_COMPILATION_CACHE_DIR) would take precedence over the flag.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "ETA" in out.stderr
  assert len(os.listdir(cache)) >= 2  # The compiled steps, for the next process to reuse.
  # The per-class file names the classes (TFDS ClassLabel), for plots without the dataset.
  with open(os.path.join(workdir, "stage1", "per_class_accuracy.json")) as f:
    assert json.load(f)["0"]["name"] == "moving left to right"
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for stage in ("stage1", "stage2"):
    assert {"top1", "top5", "num_examples", "gmacs", "params", "step"} <= set(results[stage])
    assert os.path.exists(os.path.join(workdir, stage, "per_class_accuracy.json"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, stage)))
  assert {"keypoint_precision", "keypoint_chance"} <= set(results["stage2"])
  assert results["stage1"]["gmacs"] > 0 and results["stage2"]["gmacs"] > 0
  assert os.path.exists(os.path.join(workdir, "stage2", "keypoints", "grid.png"))

  os.remove(os.path.join(workdir, "results.json"))
  out = subprocess.run(cmd + ["--mode=eval"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=env)
  assert out.returncode == 0, out.stderr[-4000:]
  with open(os.path.join(workdir, "results.json")) as f:
    again = json.load(f)
  assert again["stage2"]["top1"] == pytest.approx(results["stage2"]["top1"])
  assert again["stage2"]["num_examples"] == results["stage2"]["num_examples"]


def test_eval_of_a_checkpoint_of_another_architecture_fails_in_one_line(tiny_data_dir, tmp_path):
  cfg = load_config("synthetic", f"tiny,stage=1,data_dir={tiny_data_dir}")
  variables = models.init_variables(cfg, "video_net", jax.random.PRNGKey(0))
  meta = {"architecture": architecture.record(cfg, "video_net"), "step": 0}
  checkpoints.write_variables(str(tmp_path / "stage1" / "checkpoints"), 0, variables, meta)
  other = load_config("synthetic", f"tiny,stage=1,depth=34,data_dir={tiny_data_dir}")
  with pytest.raises(ValueError, match="model.depth") as e:
    stages.evaluate_checkpoint(other, str(tmp_path))
  assert "\n" not in str(e.value)


def test_multi_view_stage2_eval_scores_each_view_against_its_own_mask(tiny_data_dir):
  """eval.num_clips x eval.num_crops views: every view's keypoints meet that view's target mask."""
  cfg = load_config("synthetic", f"tiny,stage=2,data_dir={tiny_data_dir}")
  with cfg.unlocked():
    cfg.eval.num_clips, cfg.eval.num_crops = 2, 3
  model = models.build(cfg, "aknet")
  variables = models.init_variables(cfg, "aknet", jax.random.PRNGKey(0))
  stride = models.feature_stride(cfg)
  res = evaluate.evaluate(cfg, steps.pmapped_eval_step(model, with_keypoints=True),
                          flax.jax_utils.replicate(variables), feature_stride=stride, num_images=2)
  # Reference by hand: each clip's 6 views through the model on their own.
  apply = jax.jit(lambda x: model.apply(variables, x, train=False, return_keypoints=True))
  precision, chance, first_views = [], [], []
  for batch in pipeline.create_eval_iterator(cfg):
    for i in np.flatnonzero(batch["mask"][0]):
      views = batch["frames"][0, i]  # (V, T, S, S, 3)
      assert views.shape[0] == 6
      _, kp = apply(views)
      scores = [evaluate.keypoint_coverage(np.asarray(kp["xyt"][j]),
                                           batch["target_mask"][0, i, j], stride)
                for j in range(6)]
      precision.append(np.mean([p for p, _ in scores]))
      chance.append(np.mean([c for _, c in scores]))
      first_views.append((views[0], np.asarray(kp["xyt"][0])))
  assert res.metrics["keypoint_precision"] == pytest.approx(np.mean(precision), rel=1e-6)
  assert res.metrics["keypoint_chance"] == pytest.approx(np.mean(chance), rel=1e-6)
  for (frames, xyt, _, _), (want_frames, want_xyt) in zip(res.images, first_views):
    np.testing.assert_array_equal(frames, want_frames)  # A picture pairs a view with its points.
    np.testing.assert_array_equal(xyt, want_xyt)


def test_gradient_accumulation_gives_the_large_batch_update_where_no_batch_norm_is_involved():
  class Linear(flax.linen.Module):
    @flax.linen.compact
    def __call__(self, frames, *, train: bool):
      logits = flax.linen.Dense(3)(frames.reshape(frames.shape[0], -1))
      return {"logits": logits} if train else logits

  rng = np.random.default_rng(0)
  batch = {"frames": rng.normal(size=(1, 8, 2, 4, 4, 3)).astype(np.float32),
           "label": rng.integers(0, 3, size=(1, 8)).astype(np.int32)}
  model = Linear()
  params = model.init(jax.random.PRNGKey(0), batch["frames"][0], train=False)["params"]
  results = {}
  for k in (1, 4):
    cfg = load_config("synthetic", "tiny,stage=1")
    cfg.train.grad_accum_steps = k
    tx, schedule = optim.create_optimizer(cfg, params, 10)
    state = flax.jax_utils.replicate(steps.create_state(model, {"params": params}, tx))
    p_train = steps.pmapped_train_step(cfg, schedule)
    for _ in range(3):
      state, metrics = p_train(state, batch)
    results[k] = (jax.device_get(state.params), float(metrics["loss"][0]))
  for a, b in zip(jax.tree_util.tree_leaves(results[1][0]), jax.tree_util.tree_leaves(results[4][0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert results[1][1] == pytest.approx(results[4][1], rel=1e-5)  # Mean loss of the micro-batches.


def test_gradient_accumulation_must_divide_the_per_device_batch_and_lr_scales_on_request():
  cfg = load_config("synthetic", "tiny,stage=1")  # batch 4 on one device.
  cfg.train.grad_accum_steps = 3
  with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide the 4 clips"):
    stages.check_batch(cfg)
  cfg.train.grad_accum_steps, cfg.train.warmup_steps = 2, 0
  assert float(optim.learning_rate_schedule(cfg, 10)(0)) == pytest.approx(0.05)
  cfg.train.scale_lr_with_batch = True  # Linear rule: lr x batch / recipe batch (64).
  assert float(optim.learning_rate_schedule(cfg, 10)(0)) == pytest.approx(0.05 * 4 / 64)


def test_one_stage_control_compacts_stage1_initialisation(tmp_path):
  cfg = load_config("synthetic", "tiny,stage=2")
  cfg.train.stage2_from = "init"  # No stage-1 checkpoint needed: nothing was trained.
  got = stages.initial_variables(cfg, str(tmp_path), "2", jax.random.PRNGKey(7))
  init1 = stages.initial_variables(cfg, str(tmp_path), "1", jax.random.PRNGKey(cfg.train.seed + 1))
  want = models.compact(init1, cfg, jax.random.PRNGKey(7))
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)
  cfg.train.stage2_from = "trained"
  with pytest.raises(ValueError, match="stage 2 needs a stage-1 checkpoint"):
    stages.initial_variables(cfg, str(tmp_path), "2", jax.random.PRNGKey(7))


def test_profile_steps_write_a_trace_tensorboard_opens(tiny_data_dir, tmp_path):
  cfg = load_config("synthetic", f"tiny,stage=1,steps=6,data_dir={tiny_data_dir}")
  cfg.train.profile_steps = 2
  stages.train_and_evaluate(cfg, str(tmp_path))
  traces = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "stage1" / "plugins" / "profile")
            for f in files if f.endswith((".xplane.pb", ".trace.json.gz"))]
  assert traces, os.listdir(tmp_path / "stage1")

"""Half-written, damaged and failed checkpoints: detected, reported, the previous step used,
nothing saved before ever deleted."""

import glob
import hashlib
import logging
import os
import shutil
import signal

import flax
import jax
import numpy as np
import pytest

import faultlib
from aknet_jax import checkpoints, models
from aknet_jax.checkpoints import architecture
from aknet_jax.train import optim, step as steps
from conftest import load_config

FILE_LIMIT = 200_000  # Bytes: above every log file of a run, below a checkpoint's array files.


def _digest(path: str) -> dict:
  out = {}
  for d, _, files in os.walk(path):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), path)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def test_kill_in_the_middle_of_a_save_and_a_damaged_latest_step_fall_back_to_the_previous_step(
    tiny_data_dir, tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  workdir = faultlib.copy_run(ref["workdir"], str(tmp_path / "run"), keep_steps=(4, 6))
  cmd = faultlib.command(workdir, tiny_data_dir,
                         python=faultlib.file_size_limit(FILE_LIMIT, die=True))
  out = faultlib.run(cmd, faultlib.without_cache_writes(ref["env"]))
  # The kernel's SIGXFSZ killed it while it wrote the step-8 checkpoint's first big file.
  assert out.returncode == -signal.SIGXFSZ, out.stderr[-4000:]
  half = glob.glob(os.path.join(faultlib.step_dir(workdir), "8.orbax-checkpoint-tmp*"))
  assert half and faultlib.steps(workdir) == [4, 6]
  faultlib.corrupt_data_file(os.path.join(faultlib.step_dir(workdir), "6"), "train")

  out = faultlib.run(faultlib.command(workdir, tiny_data_dir), ref["env"])
  assert out.returncode == 0, out.stderr[-4000:]
  assert f"checkpoint {half[0]} is half-written" in out.stderr
  assert "skipped damaged checkpoint step 6" in out.stderr
  assert "Resuming stage 1 from step 4" in out.stderr
  moved = os.path.join(faultlib.step_dir(workdir), "6.corrupt")
  assert os.path.isdir(os.path.join(moved, "train"))  # Kept for inspection, never deleted.
  assert not glob.glob(os.path.join(faultlib.step_dir(workdir), "*orbax-checkpoint-tmp*"))
  faultlib.assert_identical(faultlib.variables_at(workdir, faultlib.NUM_STEPS), ref["final"])


def test_a_failed_save_reports_one_line_and_keeps_every_step_saved_before(
    tiny_data_dir, tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  workdir = faultlib.copy_run(ref["workdir"], str(tmp_path / "run"), keep_steps=(4, 6))
  before = _digest(faultlib.step_dir(workdir))
  # Past the limit the write fails with EFBIG, as on a full disk.
  cmd = faultlib.command(workdir, tiny_data_dir,
                         python=faultlib.file_size_limit(FILE_LIMIT, die=False))
  out = faultlib.run(cmd, faultlib.without_cache_writes(ref["env"]))
  assert out.returncode == 2, out.stderr[-4000:]
  # Orbax logs each failed write on one line; the run ends on our one summary line.
  line = faultlib.error_line(out.stderr)
  assert f"saving checkpoint {faultlib.step_dir(workdir)}/8 failed" in line
  assert "File too large" in line and "[4, 6]" in line and "are kept" in line
  assert faultlib.steps(workdir) == [4, 6]
  after = _digest(faultlib.step_dir(workdir))
  assert {k: v for k, v in after.items() if k.split(os.sep)[0] in ("4", "6")} == before


# Damage done to the newest step (8) of a copy of the reference run, in place on disk.
def _truncate_array_data(step_path):
  faultlib.corrupt_data_file(step_path, "variables", "truncate")


def _flip_array_bytes(step_path):
  faultlib.corrupt_data_file(step_path, "variables", "flip")


def _delete_the_train_item(step_path):
  shutil.rmtree(os.path.join(step_path, "train"))


def _remove_commit_marker(step_path):
  os.remove(os.path.join(step_path, checkpoints.COMMIT_FILE))


def _garble_meta(step_path):
  with open(os.path.join(step_path, "meta", "metadata"), "w") as f:
    f.write("{not json")


def _truncate_tree_metadata(step_path):
  path = os.path.join(step_path, "variables", "_METADATA")
  os.truncate(path, os.path.getsize(path) // 3)


# (damage, the step a reader of variables gets: it needs neither the optimiser state nor `train`).
DAMAGE = [(_truncate_array_data, 6), (_flip_array_bytes, 6), (_delete_the_train_item, 8),
          (_remove_commit_marker, 6), (_garble_meta, 6), (_truncate_tree_metadata, 6)]


def _state_template(cfg):
  """A train state of zeros with the config's structure: restoring fills in every value (built
  from shapes alone, so nothing is compiled)."""
  model = models.build(cfg, "video_net", bn_axis_name=steps.AXIS)

  def create():
    variables = flax.core.unfreeze(models.init_variables(cfg, "video_net", jax.random.PRNGKey(0)))
    tx, _ = optim.create_optimizer(cfg, variables["params"], faultlib.NUM_STEPS)
    return steps.create_state(model, variables, tx)
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(create))


@pytest.fixture(scope="module")
def template():
  cfg = load_config("synthetic", f"tiny,stage=1,steps={faultlib.NUM_STEPS}")
  return cfg, _state_template(cfg)


def _copy_stage(ref, tmp_path):
  stage = str(tmp_path / "stage1")
  shutil.copytree(os.path.join(ref["workdir"], "stage1", "checkpoints"),
                  os.path.join(stage, "checkpoints"))
  return stage


# Reading a truncated array file leaves TensorStore callbacks for a closed event loop behind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage,reader_step", DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_damaged_latest_step_is_reported_moved_aside_and_the_previous_step_restored(
    damage, reader_step, template, tiny_data_dir, tmp_path_factory, tmp_path, caplog):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  cfg, state = template
  stage = _copy_stage(ref, tmp_path)
  latest = os.path.join(stage, "checkpoints", "8")
  damage(latest)

  # Readers (eval, stage-2 initialisation) skip it too, and move nothing.
  variables, _, _, step = checkpoints.load_variables(os.path.join(stage, "checkpoints"))
  assert step == reader_step and os.path.isdir(latest)
  faultlib.assert_identical(variables, faultlib.variables_at(ref["workdir"], reader_step))

  ckpts = checkpoints.StageCheckpoints(stage, keep=3)
  with caplog.at_level(logging.WARNING):
    restored, meta, step = ckpts.restore_latest(
        state, lambda m, where: architecture.check(m, cfg, "video_net", where))
  ckpts.close()
  assert step == 6 and meta["step"] == 6 and int(restored.step) == 6
  faultlib.assert_identical(steps.variables_of(restored), faultlib.variables_at(ref["workdir"], 6))
  assert "skipped damaged checkpoint step 8" in caplog.text
  assert not os.path.exists(latest) and os.path.isdir(latest + checkpoints.CORRUPT_SUFFIX)
  assert faultlib.steps(os.path.dirname(stage)) == [4, 6]


def test_no_readable_step_is_one_error_and_nothing_is_moved(template, tiny_data_dir,
                                                            tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  cfg, state = template
  stage = _copy_stage(ref, tmp_path)
  for s in (4, 6, 8):
    _remove_commit_marker(os.path.join(stage, "checkpoints", str(s)))
  ckpts = checkpoints.StageCheckpoints(stage, keep=3)
  with pytest.raises(checkpoints.CorruptCheckpointError, match="no readable checkpoint") as e:
    ckpts.restore_latest(state)
  assert "\n" not in str(e.value)
  assert faultlib.steps(os.path.dirname(stage)) == [4, 6, 8]


def test_a_checkpoint_of_another_configuration_is_an_error_not_damage(template, tiny_data_dir,
                                                                      tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  _, state = template
  stage = _copy_stage(ref, tmp_path)
  other = load_config("synthetic", "tiny,stage=1,depth=34")
  ckpts = checkpoints.StageCheckpoints(stage, keep=3)
  with pytest.raises(ValueError, match="model.depth"):
    ckpts.restore_latest(
        state, lambda m, where: architecture.check(m, other, "video_net", where))
  wide_state = _state_template(load_config("synthetic", "tiny,stage=1,width=16"))
  with pytest.raises(ValueError, match="other shapes") as e:
    ckpts.restore_latest(wide_state)  # Shapes differ where meta cannot tell: still no damage.
  assert not isinstance(e.value, checkpoints.CorruptCheckpointError)
  assert faultlib.steps(os.path.dirname(stage)) == [4, 6, 8]

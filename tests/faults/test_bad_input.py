"""Bad input to the CLI: one `error:` line naming what to fix, exit status 2, never a traceback."""

import os
import shutil
import sys

import jax
import numpy as np
import pytest

import faultlib
from aknet_jax import checkpoints, models
from conftest import load_config

CFG = faultlib.CONFIG


def _main(workdir, *args):
  return [sys.executable, "-m", "aknet_jax.main", *args] + (
      [f"--workdir={workdir}"] if workdir else [])


# Rejected while parsing flags or validating the config, before JAX or TF are imported.
FLAG_CASES = [
    ("missing config file", ["--config=configs/nope.py"],
     "--config: cannot load the config file: No such file or directory: 'configs/nope.py'"),
    ("bad value in the config string", [f"--config={CFG},depth=19"],
     "config.model.depth: 19 is not one of (18, 34, 50, 101)"),
    ("unknown field in the config string", [f"--config={CFG},colour=red"],
     "config string: unknown field 'colour'"),
    ("override of the wrong type", [f"--config={CFG}", "--config.model.depth=deep"],
     "flag --config.model.depth=deep: invalid literal for int()"),
    ("override of an unknown field", [f"--config={CFG}", "--config.model.colour=red"],
     "--config.model.colour=red: the config has no field 'colour'"),
    ("invalid override value", [f"--config={CFG}", "--config.train.batch_size=0"],
     "config.train.batch_size: 0 must be >= 1"),
    ("unknown mode", [f"--config={CFG}", "--mode=fit"],
     "flag --mode=fit: value should be one of"),
    ("stray argument", [f"--config={CFG}", "fast"], "unexpected arguments: fast"),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in FLAG_CASES],
                         ids=[c[0] for c in FLAG_CASES])
def test_flag_and_config_errors(args, expected, tmp_path):
  out = faultlib.run(_main(str(tmp_path / "w"), *args), dict(os.environ))
  assert out.returncode == 2, out.stderr[-4000:]
  assert expected in faultlib.error_line(out.stderr)


def test_workdir_and_data_dir_errors(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  for workdir, args, expected in (
      (None, [f"--config={CFG}"], "--workdir is required"),
      (str(a_file), [f"--config={CFG}"], f"--workdir={a_file} is a file, not a directory"),
      (str(tmp_path / "w"), [f"--config={CFG},data_dir={a_file}"],
       f"config.dataset.data_dir: {a_file} is a file, not a directory")):
    out = faultlib.run(_main(workdir, *args), dict(os.environ))
    assert out.returncode == 2, out.stderr[-4000:]
    assert expected in faultlib.error_line(out.stderr)


def _stage2_checkpoint(workdir, data_dir):
  """A stage-2 (AK-Net, split res3) checkpoint of the tiny config, as evaluation reads it."""
  cfg = load_config("synthetic", f"tiny,stage=2,data_dir={data_dir}")
  shapes = jax.eval_shape(lambda: models.init_variables(cfg, jax.random.PRNGKey(0)))
  variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  checkpoints.write_variables(os.path.join(workdir, "stage2", "checkpoints"), 4, variables,
                              {"architecture": checkpoints.architecture(cfg, "2"), "step": 4})


def _damaged_dataset(data_dir, tmp_path):
  copy = str(tmp_path / "tfds")
  shutil.copytree(data_dir, copy)
  for d, _, files in os.walk(copy):
    for f in files:
      if "-train.array_record" in f:
        os.truncate(os.path.join(d, f), os.path.getsize(os.path.join(d, f)) // 6)
  return copy


def _without_commit_markers(workdir):
  for s in faultlib.steps(workdir):
    os.remove(os.path.join(faultlib.step_dir(workdir), str(s), checkpoints.COMMIT_FILE))


# (id, extra flags, how the workdir starts: 'empty' / 'reference' / a setup function, expected).
RUN_CASES = [
    ("dataset not prepared in data_dir", ["--config=configs/ssv2.py:data_dir={empty}"], "empty",
     "dataset something_something_v2 is not prepared in {empty}: run python -m aknet_jax.data.build"),
    ("unknown dataset split", ["--config.dataset.train_split=tran"], "empty",
     "split 'tran' of synthetic_something is not one of ['train', 'validation']"),
    ("damaged dataset file", ["--config={cfg},data_dir={damaged}"], "empty",
     "reading the dataset failed (UnknownError: Corrupted Riegeli/records file"),
    ("nothing to evaluate", ["--mode=eval"], "empty", "no checkpoint in {workdir}"),
    ("missing checkpoint path", ["--mode=eval", "--config.eval.checkpoint={empty}/none"], "empty",
     "no checkpoint found at {empty}/none"),
    ("resume with another architecture", ["--config={cfg},data_dir={data},depth=34"], "reference",
     "was written for depth=18 but the config has model.depth=34"),
    ("evaluate with another class count", ["--mode=eval", "--config.dataset.num_classes=5"],
     "reference", "was written for num_classes=8 but the config has dataset.num_classes=5"),
    ("evaluate with another AK-Net split", ["--mode=eval", "--config={cfg},data_dir={data},stage=2,"
                                            "split=res2"], _stage2_checkpoint,
     "was written for split='res3' but the config has model.aknet.split='res2'"),
    ("no readable checkpoint", ["--mode=eval"], "unreadable", "no readable checkpoint in"),
]


@pytest.mark.parametrize("flags,start,expected", [c[1:] for c in RUN_CASES],
                         ids=[c[0] for c in RUN_CASES])
def test_data_and_checkpoint_errors(flags, start, expected, tiny_data_dir, tmp_path_factory,
                                    tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  empty, workdir = str(tmp_path / "empty"), str(tmp_path / "run")
  os.makedirs(empty)
  if start in ("reference", "unreadable"):
    faultlib.copy_run(ref["workdir"], workdir, keep_steps=(4, 6, 8))
    if start == "unreadable":
      _without_commit_markers(workdir)
  elif callable(start):
    start(workdir, tiny_data_dir)
  names = dict(empty=empty, workdir=workdir, cfg=CFG, data=tiny_data_dir,
               damaged=_damaged_dataset(tiny_data_dir, tmp_path) if "{damaged}" in str(flags)
               else "")
  flags = [f.format(**names) for f in flags]
  if not any(f.startswith("--config=") for f in flags):
    flags.insert(0, f"--config={CFG},data_dir={tiny_data_dir}")
  before = faultlib.steps(workdir)
  out = faultlib.run(_main(workdir, *flags, *faultlib.FLAGS), ref["env"])
  assert out.returncode == 2, out.stderr[-4000:]
  assert expected.format(**names) in faultlib.error_line(out.stderr)
  assert faultlib.steps(workdir) == before  # Nothing moved, deleted or written.

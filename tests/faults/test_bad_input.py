"""Bad input to the CLI: one `error:` line naming what to fix, exit status 2, never a traceback."""

import os
import shutil
import sys

import jax
import numpy as np
import pytest

import faultlib
from aknet_jax import checkpoints, models
from aknet_jax.checkpoints import architecture
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
  shapes = jax.eval_shape(lambda: models.init_variables(cfg, "aknet", jax.random.PRNGKey(0)))
  variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  checkpoints.write_variables(os.path.join(workdir, "stage2", "checkpoints"), 4, variables,
                              {"architecture": architecture.record(cfg, "aknet"), "step": 4})


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


def _module(name, *args):
  return [sys.executable, "-m", name, *args]


# The other command lines: (id, argv with {tmp}, expected error line with {tmp}). Each is rejected
# before any file is written.
OTHER_CLI_CASES = [
    ("convert: missing config file",
     _module("aknet_jax.convert", "--config=configs/nope.py", "--source=tsm",
             "--checkpoint={tmp}/a.pth", "--workdir={tmp}/w"),
     "--config: cannot load the config file: No such file or directory: 'configs/nope.py'"),
    ("convert: override of an unknown field",
     _module("aknet_jax.convert", f"--config={CFG}", "--config.model.colour=red", "--source=tsm",
             "--checkpoint={tmp}/a.pth", "--workdir={tmp}/w"),
     "--config.model.colour=red: the config has no field 'colour'"),
    ("convert: not a PyTorch file",
     _module("aknet_jax.convert", f"--config={CFG}", "--source=tsm",
             "--checkpoint={tmp}/junk.pth", "--workdir={tmp}/w"),
     "{tmp}/junk.pth is not a PyTorch checkpoint"),
    ("convert: missing flag", _module("aknet_jax.convert", f"--config={CFG}", "--source=tsm"),
     "--checkpoint is required"),
    ("profile: bad value in the config string",
     _module("aknet_jax.profile", f"--config={CFG},depth=19"),
     "config.model.depth: 19 is not one of (18, 34, 50, 101)"),
    ("profile: unknown field in the config string",
     _module("aknet_jax.profile", f"--config={CFG},colour=red"),
     "config string: unknown field 'colour'"),
    ("profile: bad --batch", _module("aknet_jax.profile", f"--config={CFG}", "--batch=one"),
     "--batch: 'one' must be integers"),
    ("profile: --processes with --ops",
     _module("aknet_jax.profile", f"--config={CFG}", "--processes=2", "--ops"),
     "--processes=2: must be >= 1, and 1 with --ops (an op profile is not a ratio)"),
    ("sweep: invalid override value",
     _module("aknet_jax.sweep", f"--config={CFG}", "--config.model.aknet.alpha=2",
             "--workdir={tmp}/w"),
     "config.model.aknet.alpha: 2.0 must be in (0, 1]"),
    ("sweep: missing config file",
     _module("aknet_jax.sweep", "--config={tmp}/nope.py", "--workdir={tmp}/w"),
     "--config: cannot load the config file: No such file or directory: '{tmp}/nope.py'"),
    ("macs: unsupported depth", _module("aknet_jax.macs", "--depth=77"),
     "config.model.depth: 77 is not one of (18, 34, 50, 101)"),
    ("macs: alpha out of range", _module("aknet_jax.macs", "--alpha=2"),
     "config.model.aknet.alpha: 2.0 must be in (0, 1]"),
    ("data.build: no dataset", _module("aknet_jax.data.build", "--data_dir={tmp}/tfds"),
     "--dataset is required: one of"),
    ("data.build: missing manual_dir",
     _module("aknet_jax.data.build", "--dataset=something_something_v2",
             "--manual_dir={tmp}/downloads", "--data_dir={tmp}/tfds"),
     "--manual_dir={tmp}/downloads: no such directory"),
    ("data.benchmark: missing config file",
     _module("aknet_jax.data.benchmark", "--config=configs/nope.py"),
     "--config: cannot load the config file: No such file or directory: 'configs/nope.py'"),
    ("data.benchmark: dataset not prepared",
     _module("aknet_jax.data.benchmark", "--config=configs/ssv2.py:data_dir={tmp}",
             "--num_batches=1"),
     "dataset something_something_v2 is not prepared in {tmp}: run python -m aknet_jax.data.build"),
    ("config file not built on base_config",
     _module("aknet_jax.data.benchmark", "--config={tmp}/bare.py"),
     "--config: the config lacks field 'aknet'; build config files on "
     "aknet_jax.config.base_config()"),
    ("plots: missing sweep CSV",
     _module("aknet_jax.plots", "--sweep={tmp}/sweep.csv", "--out={tmp}/plot.png"),
     "No such file or directory: '{tmp}/sweep.csv'"),
]


@pytest.mark.parametrize("argv,expected", [c[1:] for c in OTHER_CLI_CASES],
                         ids=[c[0] for c in OTHER_CLI_CASES])
def test_every_cli_reports_bad_input_in_one_line(argv, expected, tmp_path):
  tmp = str(tmp_path)
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  (tmp_path / "bare.py").write_text(
      "import ml_collections\n\n\ndef get_config():\n"
      "  return ml_collections.ConfigDict({'model': {'backbone': 'tsm'}})\n")
  before = sorted(p.name for p in tmp_path.iterdir())
  out = faultlib.run([a.format(tmp=tmp) for a in argv], dict(os.environ))
  assert out.returncode == 2, out.stderr[-4000:]
  assert expected.format(tmp=tmp) in faultlib.error_line(out.stderr)
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dataset_build_on_a_full_disk_is_one_line_and_leaves_nothing_half_built(tmp_path):
  data_dir = tmp_path / "tfds"
  # Past 100 kB the write fails with EFBIG, as on a full disk.
  python = faultlib.file_size_limit(100_000, die=False, module="aknet_jax.data.build")
  out = faultlib.run([sys.executable, *python, "--dataset=synthetic_something", "--config=tiny",
                      f"--data_dir={data_dir}"], dict(os.environ))
  assert out.returncode == 2, out.stderr[-4000:]
  line = faultlib.error_line(out.stderr)
  assert f"writing synthetic_something under {data_dir} failed" in line
  assert "File too large" in line and "free space there" in line
  built = data_dir / "synthetic_something" / "tiny"
  assert not built.exists() or not any(built.iterdir())

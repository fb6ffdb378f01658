"""--file_format=tfrecord builds what tfds as_dataset() reads; our pipeline says why it cannot."""

import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from aknet_jax.data import build, source, synthetic_something
from conftest import ROOT, load_config


def test_tfrecord_build_reads_with_as_dataset_and_the_pipeline_says_rebuild(tmp_path):
  cmd = [sys.executable, "-m", "aknet_jax.data.build", "--dataset=synthetic_something",
         "--config=tiny", f"--data_dir={tmp_path}", "--file_format=tfrecord"]
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "train: 32 clips written, 0 skipped" in run.stdout, run.stdout
  directory = tmp_path / "synthetic_something" / "tiny" / "1.0.0"
  files = sorted(os.listdir(directory))
  assert "synthetic_something-train.tfrecord-00000-of-00001" in files
  assert not any("array_record" in f for f in files)

  # The user's call from the issue, no file_format: the prepared dataset's own format is read.
  b = tfds.builder("synthetic_something", data_dir=str(tmp_path), config="tiny")
  examples = list(b.as_dataset(split="train").as_numpy_iterator())
  assert len(examples) == 32
  assert examples[0]["frames"].shape == (12, 32, 48, 3)
  assert {int(e["label"]) for e in examples} == set(range(8))
  # Without our builder classes: TFDS's read-only builder from the dataset's directory.
  assert sum(1 for _ in tfds.builder_from_directory(str(directory)).as_dataset(split="train")) == 32

  cfg = load_config("synthetic", f"tiny,data_dir={tmp_path}")
  assert source.class_names(cfg) == list(synthetic_something.CLASSES)  # Info reads the same.
  with pytest.raises(ValueError, match="was built with file_format=tfrecord; our pipeline needs "
                                       "array_record") as e:
    source.open_split(cfg, "train")
  assert "\n" not in str(e.value) and "--file_format=array_record" in str(e.value)
  with pytest.raises(ValueError, match="already prepared .* with file_format=tfrecord"):
    build.build("synthetic_something", None, str(tmp_path), config="tiny")


def test_unknown_file_format_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="--file_format: 'parquet' is not one of"):
    build.build("synthetic_something", None, str(tmp_path), config="tiny", file_format="parquet")

"""A diverging run stops at the first non-finite step and never checkpoints a NaN state."""

import re

import jax
import numpy as np

import faultlib


def test_nan_loss_stops_training_naming_the_step_and_the_last_good_checkpoint_stays_latest(
    tiny_data_dir, tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  workdir = faultlib.copy_run(ref["workdir"], str(tmp_path / "run"), keep_steps=(4,))
  # Resumed at step 4 with a learning rate that overflows the weights: real divergence.
  out = faultlib.run(faultlib.command(workdir, tiny_data_dir, "--config.train.learning_rate=1e30"),
                     ref["env"])
  assert out.returncode == 2, out.stderr[-4000:]
  line = faultlib.error_line(out.stderr)
  found = re.search(r"stage 1: training loss is (nan|inf|-inf) \(gradient norm \S+\) at step (\d+)",
                    line)
  assert found, line
  assert 4 < int(found.group(2)) <= faultlib.NUM_STEPS
  assert "the latest good checkpoint, step 4" in line
  assert faultlib.steps(workdir) == [4]
  for leaf in jax.tree_util.tree_leaves(faultlib.variables_at(workdir, 4)):
    assert np.all(np.isfinite(leaf))

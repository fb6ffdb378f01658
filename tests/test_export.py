"""Export: the workdir's model as StableHLO and a TF SavedModel, reloaded in a fresh process."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import checkpoints, export, models
from aknet_jax.checkpoints import architecture, restore
from aknet_jax.data import synthetic_something
from aknet_jax.train import step as steps
from conftest import ROOT, load_config

TINY = "tiny,stage=2"

# Run in a fresh process: nothing of the repository imported, only jax and tensorflow.
_RELOAD = """
import sys, numpy as np, jax, tensorflow as tf
out, inputs, result = sys.argv[1:]
x = np.load(inputs)
with open(out + "/model.stablehlo", "rb") as f:
  exported = jax.export.deserialize(bytearray(f.read()))
logits1, kp1 = exported.call(x["one"])
logits3, kp3 = exported.call(x["three"])
serve = tf.saved_model.load(out + "/saved_model").signatures["serving_default"]
tf_out = serve(frames=tf.constant(x["three"]))
np.savez(result, logits1=logits1, logits3=logits3, kp3=kp3, tf_logits=tf_out["logits"].numpy(),
         tf_kp=tf_out["keypoints"].numpy(), shape=str(exported.in_avals[0].shape))
"""


def _workdir(path, stage):
  """A workdir whose stage<stage>/checkpoints holds a freshly initialised tiny model (step 4)."""
  cfg = load_config("synthetic", f"tiny,stage={stage}")
  kind = "aknet" if stage == 2 else "video_net"
  variables = models.init_variables(cfg, kind, jax.random.PRNGKey(stage))
  meta = {"architecture": architecture.record(cfg, kind), "step": 4}
  checkpoints.write_variables(str(path / f"stage{stage}" / "checkpoints"), 4, variables, meta)
  return path


def _in_process(cfg, workdir, frames):
  kind, variables, _, _ = restore.load_model_variables(cfg, str(workdir))
  model = models.build(cfg, kind)
  fn = jax.jit(lambda v, x: steps.eval_step(v, x, model=model, with_keypoints=kind == "aknet"))
  return fn(variables, jnp.asarray(frames))


@pytest.mark.slow
def test_export_cli_reloads_in_a_fresh_process_at_two_batch_sizes(tmp_path):
  workdir = _workdir(tmp_path / "run", 2)
  out = tmp_path / "exported"
  cmd = [sys.executable, "-m", "aknet_jax.export", f"--config=configs/synthetic.py:{TINY}",
         f"--workdir={workdir}", f"--out={out}"]
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert f"wrote {out}/model.stablehlo: aknet at step 4" in run.stdout, run.stdout
  meta = json.loads((out / "model.json").read_text())
  assert meta["input_shape"] == ["batch", 4, 32, 32, 3] and meta["layout"] == "B, T*L, H, W, C"
  assert meta["class_names"] == list(synthetic_something.CLASSES)
  assert (meta["kind"], meta["checkpoint_step"], meta["saved_model"]) == ("aknet", 4, "saved_model")
  assert meta["outputs"] == ["logits", "keypoints"] and meta["jax_version"] == jax.__version__
  assert (meta["num_segments"], meta["frames_per_segment"], meta["image_size"]) == (4, 1, 32)
  assert meta["platforms"] == ["cpu", "cuda"]

  rng = np.random.default_rng(0)
  frames = {"one": rng.normal(size=(1, 4, 32, 32, 3)).astype(np.float32),
            "three": rng.normal(size=(3, 4, 32, 32, 3)).astype(np.float32)}
  np.savez(tmp_path / "inputs.npz", **frames)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  reload = subprocess.run([sys.executable, "-c", _RELOAD, str(out), str(tmp_path / "inputs.npz"),
                           str(tmp_path / "result.npz")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
  assert reload.returncode == 0, reload.stderr[-3000:]
  got = np.load(tmp_path / "result.npz")
  assert str(got["shape"]) == "(batch, 4, 32, 32, 3)"
  cfg = load_config("synthetic", TINY)
  logits1, _ = _in_process(cfg, workdir, frames["one"])
  logits3, kp3 = _in_process(cfg, workdir, frames["three"])
  assert got["logits1"].shape == (1, 8) and got["logits3"].shape == (3, 8)
  np.testing.assert_allclose(got["logits1"], logits1, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got["logits3"], logits3, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got["tf_logits"], logits3, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(got["kp3"], kp3["xyt"])
  np.testing.assert_array_equal(got["tf_kp"], kp3["xyt"])


def test_stage1_export_with_checkpoint_flag_returns_logits_only(tmp_path):
  workdir = _workdir(tmp_path / "run1", 1)
  cfg = load_config("synthetic", "tiny,stage=1")
  out = tmp_path / "exported1"
  step_dir = str(workdir / "stage1" / "checkpoints" / "4")
  meta = export.export(cfg, str(tmp_path / "elsewhere"), str(out), checkpoint=step_dir,
                       saved_model=False, platforms=["cpu"])
  assert (meta["kind"], meta["outputs"], meta["saved_model"]) == ("video_net", ["logits"], None)
  exported = jax.export.deserialize(bytearray((out / "model.stablehlo").read_bytes()))
  frames = np.random.default_rng(1).normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
  expected, _ = _in_process(cfg, workdir, frames)
  np.testing.assert_allclose(exported.call(frames), expected, atol=1e-5, rtol=0)
  assert not (out / "saved_model").exists()


def test_bad_export_arguments_are_one_line_errors(tmp_path):
  cfg = load_config("synthetic", TINY)
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    export.export(cfg, str(tmp_path), str(tmp_path / "file"))
  with pytest.raises(ValueError, match="--platforms: gpu not among cpu,cuda,rocm,tpu"):
    export.export(cfg, str(tmp_path), str(tmp_path / "o"), platforms=["gpu"])
  with pytest.raises(ValueError, match="no checkpoint in"):
    export.export(cfg, str(tmp_path), str(tmp_path / "o"))

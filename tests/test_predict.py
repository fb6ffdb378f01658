"""Predict: a small mp4 written here is decoded, sampled as at eval, classified, keypoints drawn."""

import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
import tensorflow as tf

from aknet_jax import checkpoints, models, predict
from aknet_jax.checkpoints import architecture
from aknet_jax.data import augment, sampling, synthetic_something
from conftest import ROOT, load_config

TINY = "tiny,stage=2"


def _write_mp4(path, num_frames=20, size=(48, 64)):
  """A small H.264 clip: a bright square moving right on grey; frame i also encodes i in red."""
  h, w = size
  with av.open(str(path), mode="w") as out:
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(num_frames):
      img = np.full((h, w, 3), 100, np.uint8)
      img[:, :, 0] = 10 * i
      img[16:32, 2 * i:2 * i + 16] = 250
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


@pytest.fixture(scope="module")
def stage2_workdir(tmp_path_factory):
  """A workdir whose stage2/checkpoints holds a freshly initialised tiny AK-Net."""
  workdir = tmp_path_factory.mktemp("predict_run")
  cfg = load_config("synthetic", TINY)
  variables = models.init_variables(cfg, "aknet", jax.random.PRNGKey(0))
  meta = {"architecture": architecture.record(cfg, "aknet"), "step": 4}
  checkpoints.write_variables(str(workdir / "stage2" / "checkpoints"), 4, variables, meta)
  return workdir


def test_decode_and_views_sample_as_the_eval_pipeline(tmp_path):
  video = tmp_path / "clip.mp4"
  _write_mp4(video)
  frames = predict.decode_frames(str(video))
  assert frames.shape == (20, 48, 64, 3) and frames.dtype == np.uint8
  # The red channel encodes the frame number (lossy codec: within a few levels).
  np.testing.assert_allclose(frames[:, 5, 5, 0], 10 * np.arange(20), atol=6)
  cfg = load_config("synthetic", TINY)  # 4 segments, short side 32, 32x32 centre crop.
  views = predict.eval_views(frames, cfg)
  assert views.shape == (4, 32, 32, 3)
  # Independent reference: TSN test indices are the segment centres int(20/4 * (k + 0.5)).
  idx = [int(20 / 4 * (k + 0.5)) for k in range(4)]
  assert list(sampling.eval_indices(20, 4, 1).numpy()) == idx == [2, 7, 12, 17]
  red = views[:, 0, 0, 0] * augment.STDDEV_RGB[0] + augment.MEAN_RGB[0]
  np.testing.assert_allclose(red * 255, 10 * np.array(idx), atol=8)
  # Resize 48x64 -> 32x42 (short side), centre crop 32x32 at x offset round(10/2) = 5.
  ref = tf.image.resize(frames[idx].astype(np.float32), (32, 42), antialias=True)[:, :, 5:37]
  np.testing.assert_allclose(views, augment.normalize(ref).numpy(), atol=1e-4)


def test_predict_from_the_command_line_prints_five_classes_and_writes_the_gif(stage2_workdir,
                                                                               tmp_path):
  video = tmp_path / "moving square.mp4"
  _write_mp4(video)
  cmd = [sys.executable, "-m", "aknet_jax.main", f"--config=configs/synthetic.py:{TINY}",
         f"--workdir={stage2_workdir}", "--mode=predict", f"--video={video}"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [l for l in out.stdout.splitlines() if l[:2] in {f"{i}." for i in range(1, 10)}]
  assert [l.split(".")[0] for l in lines] == ["1", "2", "3", "4", "5"], out.stdout
  probs = [float(l.rsplit(None, 1)[1]) for l in lines]
  assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
  assert all(l.split(None, 1)[1].rsplit(None, 1)[0] in synthetic_something.CLASSES
             for l in lines)
  gif = stage2_workdir / "predict" / "moving square" / "clip_000.gif"
  assert gif.exists()
  with av.open(str(gif)) as g:  # One GIF frame per segment.
    assert sum(1 for _ in g.decode(video=0)) == 4


def test_an_undecodable_file_is_one_line_error(stage2_workdir, tmp_path):
  bad = tmp_path / "broken.mp4"
  bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
  cfg = load_config("synthetic", TINY)
  with pytest.raises(ValueError, match="cannot decode") as e:
    predict.predict(cfg, str(stage2_workdir), str(bad))
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="no such file"):
    predict.predict(cfg, str(stage2_workdir), str(tmp_path / "missing.mp4"))

"""Predict: a small mp4 written here is decoded, sampled as at eval, classified, keypoints drawn;
a longer one is classified window by window."""

import csv
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

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


def _write_lossless(path, frames, rate=10):
  """Frames (N, H, W, 3) uint8 as lossless RGB H.264 (libx264rgb, crf 0): decoded bit-exactly."""
  with av.open(str(path), mode="w") as out:
    stream = out.add_stream("libx264rgb", rate=rate, options={"crf": "0", "preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def _two_part_frames(num_frames=50, size=(48, 64)):
  """A square moving right for the first half, down for the second; frame i encodes i in red."""
  h, w = size
  frames = np.full((num_frames, h, w, 3), 100, np.uint8)
  for i in range(num_frames):
    frames[i, :, :, 0] = 5 * i % 256
    j = i % (num_frames // 2)
    if i < num_frames // 2:
      frames[i, 16:32, 2 * j:2 * j + 16] = 250
    else:
      frames[i, j:j + 16, 24:40] = 250
  return frames


def test_windows_of_known_length_and_rate():
  assert predict.windows(50, 10.0, 2.0) == [(0, 20), (20, 40), (30, 50)]  # Last one at the end.
  assert predict.windows(50, 10.0, 2.0, 1.5) == [(0, 20), (15, 35), (30, 50)]
  assert predict.windows(60, 10.0, 2.0) == [(0, 20), (20, 40), (40, 60)]
  assert predict.windows(15, 10.0, 2.0) == [(0, 15)]  # Shorter than a window: one window.
  assert predict.windows(300, 29.97, 4.0, 2.0)[:2] == [(0, 120), (60, 180)]


def test_windowed_predict_writes_csv_timeline_gifs_and_matches_the_whole_clip_path(
    stage2_workdir, tmp_path, capsys):
  video = tmp_path / "two parts.mkv"
  _write_lossless(video, _two_part_frames())  # 50 frames at 10 fps: 5 s.
  cfg = load_config("synthetic", TINY)
  out = predict.predict(cfg, str(stage2_workdir), str(video), window_seconds=2.0,
                        stride_seconds=1.5)
  assert out["windows"] == [(0.0, 2.0), (1.5, 3.5), (3.0, 5.0)]
  printed = capsys.readouterr().out
  assert "50 frames at 10 fps (5.00 s), 3 windows of 2 s" in printed
  lines = [l.split() for l in printed.splitlines() if l.strip().split(" ")[0].isdigit()]
  assert [l[1] for l in lines] == ["0.00-2.00", "1.50-3.50", "3.00-5.00"], printed
  directory = stage2_workdir / "predict" / "two parts"
  with open(directory / "windows.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["window", "start_s", "end_s"] + [
      c for r in range(1, 6) for c in (f"top{r}_class", f"top{r}_prob")]
  assert [r[:3] for r in rows[1:]] == [["0", "0.000", "2.000"], ["1", "1.500", "3.500"],
                                       ["2", "3.000", "5.000"]]
  for r, p in zip(rows[1:], out["probs"]):
    names = r[3::2]
    assert all(n in synthetic_something.CLASSES for n in names) and len(set(names)) == 5
    np.testing.assert_allclose([float(q) for q in r[4::2]], np.sort(p)[::-1][:5], atol=1e-6)
  with Image.open(directory / "timeline.png") as png:
    png.verify()
  with Image.open(directory / "timeline.png") as png:
    assert png.format == "PNG" and png.size[0] > 200
  assert [os.path.basename(g) for g in out["keypoints"]] == [f"clip_00{i}.gif" for i in range(3)]
  assert all(os.path.exists(g) for g in out["keypoints"])
  (directory / "clip_003.gif").write_bytes(b"")  # A previous run's extra window: removed below.

  # Window 1 (frames 15..34) cut out as its own video goes through the whole-video path.
  frames = predict.decode_frames(str(video))
  np.testing.assert_array_equal(frames, _two_part_frames())  # Lossless.
  cut = tmp_path / "cut.mkv"
  _write_lossless(cut, frames[15:35])
  whole = predict.predict(cfg, str(stage2_workdir), str(cut))
  np.testing.assert_allclose(whole["probs"], out["probs"][1], atol=1e-5, rtol=0)
  predict.predict(cfg, str(stage2_workdir), str(video), window_seconds=2.0, stride_seconds=1.5)
  assert not (directory / "clip_003.gif").exists()


def test_window_flag_errors_are_one_line(stage2_workdir, tmp_path):
  cfg = load_config("synthetic", TINY)
  video = tmp_path / "clip.mp4"
  _write_mp4(video)
  for kwargs, match in [({"window_seconds": 0.0}, "--window_seconds=0.0: must be > 0"),
                        ({"window_seconds": 1.0, "stride_seconds": -1.0},
                         "--stride_seconds=-1.0: must be > 0"),
                        ({"stride_seconds": 1.0}, "--stride_seconds needs --window_seconds")]:
    with pytest.raises(ValueError, match=match) as e:
      predict.predict(cfg, str(stage2_workdir), str(video), **kwargs)
    assert "\n" not in str(e.value)
  cmd = [sys.executable, "-m", "aknet_jax.main", f"--config=configs/synthetic.py:{TINY}",
         f"--workdir={stage2_workdir}", "--mode=predict", f"--video={video}",
         "--stride_seconds=1"]
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      "error: --stride_seconds needs --window_seconds (the length of each window)")


def test_a_url_goes_to_pyav_not_to_the_file_check(tmp_path):
  video = tmp_path / "clip.mp4"
  _write_mp4(video)
  frames, fps = predict.decode_video(f"file://{video}")
  assert frames.shape == (20, 48, 64, 3) and fps == 10.0
  with pytest.raises(ValueError, match="cannot decode file:///nonexistent/x.mp4"):
    predict.decode_video("file:///nonexistent/x.mp4")
  assert predict.output_dir("W", "rtsp://cam:554/live/front door?x=1") == os.path.join(
      "W", "predict", "front door")

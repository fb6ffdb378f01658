"""TFDS builders on tiny raw datasets in each distributed layout, built into a temporary dir."""

import json
import os
import subprocess
import sys

import av
import numpy as np
from PIL import Image
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from aknet_jax.data import build  # noqa: E402
from aknet_jax.data import class_names  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSV2 = class_names.class_names("ssv2")
H, W, N = 32, 48, 12


def clip_frames(seed, n=N, h=H, w=W):
  """Smooth frames (codec friendly) whose red channel encodes the frame number."""
  rng = np.random.default_rng(seed)
  gx, gy = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
  base = rng.uniform(0.2, 0.8, 2)
  out = np.zeros((n, h, w, 3), np.uint8)
  for t in range(n):
    out[t, ..., 0] = 10 + 20 * t
    out[t, ..., 1] = 255 * (base[0] * gx + (1 - base[0]) * gy)
    out[t, ..., 2] = 255 * (base[1] * gy + (1 - base[1]) * (1 - gx))
  return out


def write_video(path, frames, codec):
  with av.open(str(path), "w") as c:
    s = c.add_stream(codec, rate=12)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.options = {"crf": "4", "b:v": "0"} if codec == "libvpx-vp9" else {"crf": "4"}
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def pyav_frames(path):
  with av.open(str(path)) as c:
    return [f.to_image() for f in c.decode(video=0)]


def reference_resize(image, short):
  """Short side -> `short`, long side truncated; PIL bilinear (written here, independently)."""
  w, h = image.size
  size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  return np.asarray(image.resize(size, Image.BILINEAR), np.float32)


def read_split(data_dir, name, split, config=None):
  builder = tfds.builder(name, data_dir=str(data_dir), config=config)
  out = {}
  for ex in builder.as_data_source(split):  # TFDS's own decoding (PIL), not our pipeline.
    ex["frames"] = np.stack(ex["frames"])
    out[ex["id"].decode()] = ex
  return out


def test_ssv1_jpeg_folders_and_csv(tmp_path):
  manual = tmp_path / "manual"
  frames_root = manual / "20bn-something-something-v1"
  clips = {"101": SSV2[0], "102": SSV2[100], "103": SSV2[173], "201": SSV2[5]}
  originals = {}
  for i, cid in enumerate(clips):
    (frames_root / cid).mkdir(parents=True)
    originals[cid] = clip_frames(i, n=5 + i)
    for t, f in enumerate(originals[cid]):
      Image.fromarray(f).save(frames_root / cid / f"{t + 1:05d}.jpg", quality=90)
  (manual / "something-something-v1-labels.csv").write_text("\n".join(sorted(SSV2)) + "\n")
  (manual / "something-something-v1-train.csv").write_text(
      "101;%s\n102;%s\n999;%s\n103;Not a class\n" % (clips["101"], clips["102"], SSV2[3]))
  (manual / "something-something-v1-validation.csv").write_text("201;%s\n" % clips["201"])
  data_dir = tmp_path / "tfds"
  report = build.build("something_something_v1", str(manual), str(data_dir))

  assert report["train"]["num_examples"] == 2 and report["validation"]["num_examples"] == 1
  reasons = {s["id"]: s["reason"] for s in report["train"]["skipped"]}
  assert set(reasons) == {"999", "103"}
  assert "missing frame folder" in reasons["999"] and "not in the class list" in reasons["103"]
  assert os.path.exists(os.path.join(report["_data_dir"], "build_report.json"))
  train = read_split(data_dir, "something_something_v1", "train")
  assert sorted(train) == ["101", "102"]
  for cid, ex in train.items():
    assert ex["label"] == SSV2.index(clips[cid])
    assert ex["num_frames"] == len(originals[cid]) == len(ex["frames"])
    # Default config keeps the distributed JPEG bytes: decoding them gives the same pixels.
    for t, f in enumerate(ex["frames"]):
      ref = np.asarray(Image.open(frames_root / cid / f"{t + 1:05d}.jpg"))
      np.testing.assert_array_equal(f, ref)
      assert np.abs(f.astype(np.float32) - originals[cid][t]).mean() < 3  # JPEG tolerance.


@pytest.mark.parametrize("naming", ["labels_folder", "original"])
def test_ssv2_webm_and_json(tmp_path, naming):
  manual = tmp_path / "manual"
  videos = manual / "20bn-something-something-v2"
  videos.mkdir(parents=True)
  entries = {
      "train": [{"id": "11", "template": "Putting [something] onto [something]"},
                {"id": "12", "template": SSV2[0]},
                {"id": "13", "template": "Dancing with [something]"},  # Not a class.
                {"id": "14", "template": SSV2[1]},  # Corrupt video.
                {"id": "15", "template": SSV2[2]},  # Empty file.
                {"id": "16", "template": SSV2[3]}],  # No file.
      "validation": [{"id": "21", "template": SSV2[7]}],
      "test": [{"id": "31"}],
  }
  for i, cid in enumerate(["11", "12", "13", "21", "31"]):
    write_video(videos / f"{cid}.webm", clip_frames(i), "libvpx-vp9")
  (videos / "14.webm").write_bytes(np.random.default_rng(0).bytes(3000))
  (videos / "15.webm").write_bytes(b"")
  labels = {name: str(i) for i, name in enumerate(SSV2)}
  files = {"labels": labels, **entries}
  for split, content in files.items():
    path = (manual / "labels" / f"{split}.json" if naming == "labels_folder"
            else manual / f"something-something-v2-{split}.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(content))
  data_dir = tmp_path / "tfds"
  report = build.build("something_something_v2", str(manual), str(data_dir), config="short128")

  assert {s: r["num_examples"] for s, r in report.items() if s != "_data_dir"} == {
      "train": 2, "validation": 1, "test": 1}
  reasons = {s["id"]: s["reason"] for s in report["train"]["skipped"]}
  assert set(reasons) == {"13", "14", "15", "16"}
  assert "not in the class list" in reasons["13"]
  assert "undecodable" in reasons["14"] and "empty" in reasons["15"] and "missing" in reasons["16"]
  train = read_split(data_dir, "something_something_v2", "train", "short128")
  assert train["11"]["label"] == SSV2.index("Putting something onto something")
  assert train["12"]["label"] == 0
  assert read_split(data_dir, "something_something_v2", "test", "short128")["31"]["label"] == -1
  for cid in ("11", "12"):
    ex = train[cid]
    decoded = pyav_frames(videos / f"{cid}.webm")
    assert ex["num_frames"] == len(decoded) == N
    assert ex["frames"].shape == (N, 128, 192, 3)
    for t in range(N):
      ref = reference_resize(decoded[t], 128)
      assert np.abs(ex["frames"][t] - ref).mean() < 2.0  # JPEG q90 tolerance.
    # Frame order survives: the red channel encodes the frame number (codec tolerance).
    np.testing.assert_allclose(ex["frames"][..., 0].mean(axis=(1, 2)), 10 + 20 * np.arange(N),
                               atol=6)
  if naming == "labels_folder":
    check_eval_pipeline(data_dir, train)


def check_eval_pipeline(data_dir, train):
  """The eval pipeline on the built SSv2 split vs a PIL/NumPy reference of its transforms."""
  from aknet_jax.data import pipeline
  from conftest import load_config
  cfg = load_config("ssv2", f"data_dir={data_dir},segments=4,image_size=64")
  cfg.dataset.builder_config, cfg.dataset.resize_short, cfg.eval.batch_size = "short128", 64, 2
  [batch] = list(pipeline.create_eval_iterator(cfg, split="train", num_local_devices=1))
  assert "target_mask" not in batch and batch["mask"].all()
  for i, index in enumerate(batch["index"][0]):
    ex = next(e for e in train.values()
              if e["label"] == batch["label"][0, i])  # Two train clips, distinct labels.
    tick = N / 4
    centres = [int(tick / 2 + tick * k) for k in range(4)]
    for k, t in enumerate(centres):
      ref = np.asarray(Image.fromarray(ex["frames"][t]).resize((96, 64), Image.BILINEAR),
                       np.float32)[:, 16:80] / 255.0
      ref = (ref - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
      got = batch["frames"][0, i, k]
      assert got.shape == (64, 64, 3)
      assert np.abs(got - ref).mean() < 0.015, (index, k)  # < 1 level of 255: decoder, rounding.


def test_diving48_mp4_and_json(tmp_path):
  manual = tmp_path / "manual"
  (manual / "rgb").mkdir(parents=True)
  names = class_names.class_names("diving48")
  (manual / "Diving48_vocab.json").write_text(json.dumps([n.split("+") for n in names]))
  train = [{"vid_name": "abc_00001", "label": 7, "start_frame": 0, "end_frame": 11},
           {"vid_name": "abc_00002", "label": 47, "start_frame": 0, "end_frame": 11},
           {"vid_name": "abc_00003", "label": 48, "start_frame": 0, "end_frame": 11},
           {"vid_name": "abc_00004", "label": 1, "start_frame": 0, "end_frame": 11}]
  test = [{"vid_name": "xyz_00001", "label": 0, "start_frame": 0, "end_frame": 11}]
  (manual / "Diving48_V2_train.json").write_text(json.dumps(train))
  (manual / "Diving48_V2_test.json").write_text(json.dumps(test))
  for i, v in enumerate(["abc_00001", "abc_00002", "abc_00003", "xyz_00001"]):
    write_video(manual / "rgb" / f"{v}.mp4", clip_frames(10 + i), "libx264")
  (manual / "rgb" / "abc_00004.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
  data_dir = tmp_path / "tfds"
  # Two decoding worker processes: the path large datasets take.
  report = build.build("diving48", str(manual), str(data_dir), config="short128", num_workers=2)

  assert report["train"]["num_examples"] == 2 and report["test"]["num_examples"] == 1
  reasons = {s["id"]: s["reason"] for s in report["train"]["skipped"]}
  assert "not in the class list" in reasons["abc_00003"] and "undecodable" in reasons["abc_00004"]
  ds = read_split(data_dir, "diving48", "train", "short128")
  assert {k: v["label"] for k, v in ds.items()} == {"abc_00001": 7, "abc_00002": 47}
  decoded = pyav_frames(manual / "rgb" / "abc_00002.mp4")
  ex = ds["abc_00002"]
  assert ex["num_frames"] == len(decoded) == N
  for t in range(N):
    assert np.abs(ex["frames"][t] - reference_resize(decoded[t], 128)).mean() < 2.0


def test_wrong_layout_names_the_expected_file(tmp_path):
  manual = tmp_path / "manual"
  (manual / "rgb").mkdir(parents=True)
  (manual / "Diving48_V2_train.json").write_text("[]")
  with pytest.raises(ValueError, match=r"expected the file Diving48_V2_test\.json at .*manual"):
    build.build("diving48", str(manual), str(tmp_path / "tfds"))
  (manual / "labels").mkdir()
  (manual / "20bn-something-something-v2").mkdir()
  (manual / "labels" / "labels.json").write_text("{}")
  with pytest.raises(ValueError, match=r"expected the label file labels/train\.json \(or "
                     r"something-something-v2-train\.json\)"):
    build.build("something_something_v2", str(manual), str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"expected the frame folders 20bn-something-something-v1"):
    build.build("something_something_v1", str(manual), str(tmp_path / "tfds"))


def test_cli_empty_manual_dir_is_one_line(tmp_path):
  empty = tmp_path / "downloads"
  empty.mkdir()
  r = subprocess.run(
      [sys.executable, "-m", "aknet_jax.data.build", "--dataset=diving48",
       f"--manual_dir={empty}", f"--data_dir={tmp_path / 'tfds'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: diving48: manual_dir") and str(empty) in last
  assert "does not exist or is empty" in last


def test_tfds_build_command_runs_our_builders(tmp_path):
  """TFDS's own `tfds build` command (its launcher needs apache-beam only to start, so the command
  class is run directly): it finds the builders by name and writes ArrayRecord files."""
  simple_parsing = pytest.importorskip("simple_parsing")
  from tensorflow_datasets.scripts.cli import build as tfds_build
  args = simple_parsing.parse(tfds_build.Args, args=[
      "synthetic_something", "--imports=aknet_jax.data.builders", "--config=tiny",
      f"--data_dir={tmp_path}"])
  args.execute()
  builder = tfds.builder("synthetic_something", data_dir=str(tmp_path), config="tiny")
  assert builder.info.file_format.value == "array_record"
  assert builder.info.splits["train"].num_examples == 32

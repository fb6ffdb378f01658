"""The input pipeline on synthetic_something/tiny: layout, determinism, resume, sharding, masks."""

import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from aknet_jax.data import augment  # noqa: E402
from aknet_jax.data import pipeline  # noqa: E402
from conftest import load_config  # noqa: E402

MEAN, STD = np.array(augment.MEAN_RGB), np.array(augment.STDDEV_RGB)


@pytest.fixture()
def cfg(tiny_data_dir):
  """tiny: 12 frames of 32x48, 32 train / 16 validation clips; T = 4, S = 32, batch 4."""
  return load_config("synthetic", f"tiny,data_dir={tiny_data_dir}")


def take(it, n):
  return list(itertools.islice(it, n))


def test_train_batch_layout(cfg):
  cfg.dataset.has_masks = False
  [b] = take(pipeline.create_train_iterator(cfg, num_local_devices=2), 1)
  assert b["frames"].shape == (2, 2, 4, 32, 32, 3) and b["frames"].dtype == np.float32
  assert b["label"].shape == (2, 2) and b["label"].dtype == np.int32
  assert b["mask"].dtype == bool and b["mask"].all()
  assert b["index"].dtype == np.int64
  assert b["target_mask"].shape == (2, 2, 4, 32, 32) and b["target_mask"].dtype == np.float32
  assert 0.0 <= b["target_mask"].min() and b["target_mask"].max() <= 1.0
  assert cfg.dataset.has_masks  # Set from the dataset's features.
  pixels = b["frames"] * STD + MEAN  # ImageNet normalisation undone -> [0, 1].
  assert -0.01 <= pixels.min() and pixels.max() <= 1.01
  # Labels are the examples' labels (tiny: label = example number % 8, order shuffled by TFDS).
  assert np.all(b["label"] >= 0) and np.all(b["label"] < 8)


def test_resume_yields_exactly_the_uninterrupted_stream(cfg):
  full = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 11)
  # One epoch = 32 clips = 8 batches: each example exactly once, in a shuffled order.
  first_epoch = np.concatenate([b["index"].ravel() for b in full[:8]])
  assert sorted(first_epoch) == list(range(32)) and list(first_epoch) != list(range(32))
  second_epoch = np.concatenate([b["index"].ravel() for b in full[8:]])
  assert list(second_epoch) != list(first_epoch[:12])  # A new permutation per epoch.
  resumed = take(pipeline.create_train_iterator(cfg, start_batch=6, num_local_devices=1), 5)
  for a, b in zip(full[6:], resumed):  # Crosses the epoch boundary.
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  cfg.train.seed = 1
  other = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 1)[0]
  assert not np.array_equal(other["index"], full[0]["index"])


def test_train_hosts_read_slices_of_the_same_global_batches(cfg):
  cfg.train.batch_size = 8
  one = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 6)
  two = [take(pipeline.create_train_iterator(cfg, process_index=p, process_count=2,
                                             num_local_devices=1), 6) for p in range(2)]
  assert two[0][0]["frames"].shape[:2] == (1, 4)
  for k in range(6):  # Host p holds half p of each global batch, frames and all.
    for key in one[k]:
      joined = np.concatenate([two[0][k][key], two[1][k][key]], axis=1)
      np.testing.assert_array_equal(joined, one[k][key])
  epoch = np.concatenate([b["index"].ravel() for b in one[:4]])  # 32 clips = 4 batches of 8.
  assert sorted(epoch) == list(range(32))


def test_eval_covers_each_example_once_on_every_host(cfg):
  cfg.eval.batch_size = 6
  valid, counts = [], []
  for p in range(3):  # 16 clips over 3 hosts: shards of 5, 5, 6; 2 per host per batch.
    batches = list(pipeline.create_eval_iterator(cfg, process_index=p, process_count=3,
                                                 num_local_devices=1))
    counts.append(len(batches))
    for b in batches:
      valid += list(b["index"][b["mask"]])
      assert np.all(b["index"][~b["mask"]] == -1)
  assert counts == [3, 3, 3]
  assert sorted(valid) == list(range(16))


def test_eval_is_deterministic_and_in_order(cfg):
  a = list(pipeline.create_eval_iterator(cfg, num_local_devices=1))
  b = list(pipeline.create_eval_iterator(cfg, num_local_devices=1))
  assert len(a) == 4
  np.testing.assert_array_equal(np.concatenate([x["index"].ravel() for x in a]), np.arange(16))
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_eval_multi_view_layout(cfg):
  cfg.eval.num_clips, cfg.eval.num_crops = 2, 3
  [b] = take(pipeline.create_eval_iterator(cfg, num_local_devices=1), 1)
  assert b["frames"].shape == (1, 4, 6, 4, 32, 32, 3)
  assert b["target_mask"].shape == (1, 4, 6, 4, 32, 32)
  # 32x48 frames at short side 32: left / right / centre crops at x = 0, 16, 8; clips differ.
  f = b["frames"][0, 0]
  assert not np.allclose(f[0], f[2]) and not np.allclose(f[0], f[1])


def test_tdn_windows_and_centre_masks(cfg):
  cfg.model.backbone, cfg.dataset.frames_per_segment = "tdn", 5
  for it in (pipeline.create_train_iterator(cfg, num_local_devices=1),
             pipeline.create_eval_iterator(cfg, num_local_devices=1)):
    [b] = take(it, 1)
    assert b["frames"].shape == (1, 4, 20, 32, 32, 3)
    assert b["target_mask"].shape == (1, 4, 4, 32, 32)
    frames = b["frames"][0].reshape(4, 4, 5, 32, 32, 3)[:, :, 2]  # The RGB (centre) frames.
    agreement = target_colour_agreement(frames, b["target_mask"][0])
    assert agreement > 0.8, agreement


def target_colour_agreement(frames, masks):
  """Median over clips of the fraction of clearly target-coloured (pinwheel magenta) pixels that
  the mask covers; per clip, since a random distractor is sometimes magenta too."""
  rgb = (frames * STD + MEAN) * 255
  magenta = (rgb[..., 0] > 200) & (rgb[..., 1] < 70) & (rgb[..., 2] > 150)
  per_clip = [(m[g] > 0.3).mean() for m, g in zip(masks, magenta) if g.sum() >= 10]
  return float(np.median(per_clip))


def test_masks_follow_crop_and_flip(cfg):
  cfg.dataset.flip = True
  cfg.dataset.scales = (1.0, 0.875, 0.75, 0.66)
  flipped = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 4)
  cfg.dataset.flip = False
  plain = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 4)
  num_flipped = 0
  for f, p in zip(flipped, plain):
    np.testing.assert_array_equal(f["index"], p["index"])
    for i in range(4):
      a, b = f["frames"][0, i], p["frames"][0, i]
      if np.array_equal(a, b[:, :, ::-1]) and not np.array_equal(a, b):
        num_flipped += 1  # Every frame of the clip flipped together.
        np.testing.assert_array_equal(f["target_mask"][0, i], p["target_mask"][0, i][:, :, ::-1])
      else:
        np.testing.assert_array_equal(a, b)
    assert target_colour_agreement(f["frames"][0], f["target_mask"][0]) > 0.8
  assert 2 <= num_flipped <= 14


def test_bad_input_errors(cfg, tmp_path):
  cfg.train.batch_size = 6
  with pytest.raises(ValueError, match=r"config.train.batch_size: 6 is not divisible by the 4 "
                                       r"devices"):
    pipeline.create_train_iterator(cfg, num_local_devices=4)
  with pytest.raises(ValueError, match=r"config.eval.batch_size: 4 is not divisible by the 3"):
    pipeline.create_eval_iterator(cfg, num_local_devices=3)
  cfg.train.batch_size = 4
  cfg.dataset.num_classes = 174
  with pytest.raises(ValueError, match=r"config.dataset.num_classes: 174 but synthetic_something "
                                       r"has 8 classes"):
    pipeline.create_train_iterator(cfg, num_local_devices=1)
  assert not load_config("ssv1").dataset.flip and not load_config("ssv2").dataset.flip
  ss = load_config("ssv2", f"data_dir={tmp_path}")
  ss.dataset.flip = True
  with pytest.raises(ValueError, match=r"config.dataset.flip: must be False for "
                                       r"something_something_v2"):
    pipeline.create_train_iterator(ss, num_local_devices=1)
  ss.dataset.flip = False
  with pytest.raises(ValueError, match=r"dataset something_something_v2 is not prepared in .*: "
                                       r"run python -m aknet_jax.data.build "
                                       r"--dataset=something_something_v2 --manual_dir=DIR"):
    pipeline.num_examples(ss, "train")
  with pytest.raises(ValueError, match=r"split 'test' of synthetic_something is not one of"):
    pipeline.num_examples(cfg, "test")
  cfg.dataset.builder_config = "huge"
  with pytest.raises(ValueError, match=r"config.dataset.builder_config: 'huge' is not one of "
                                       r"\['default', 'tiny', 'hard'\]"):
    pipeline.num_examples(cfg, "train")


def _paper_crop(frames, image_size, seed):
  side = augment.paper_resize_side(image_size)
  box = augment.paper_crop_box(image_size, tf.constant([seed, 0], tf.int64))
  return augment.resize_and_crop(tf.constant(frames), side, box).numpy()


def _edge_frames(num_frames=3, height=18, width=72):
  """Half-planes whose edges sit at the frame's centre: channel 0 bright right of it, channel 1
  below it; channel 2 is 10 x the frame number. A 4:1 frame, so a kept aspect would show."""
  f = np.zeros((num_frames, height, width, 3), np.uint8)
  f[:, :, width // 2:, 0] = 255
  f[:, height // 2:, :, 1] = 255
  f[..., 2] = 10 * np.arange(num_frames)[:, None, None]
  return f


def test_paper_crop_resizes_to_a_square_then_one_random_crop_per_clip():
  """image_size 32: resize to 32 * 256 // 224 = 36 (256 for 224) ignoring aspect, then one
  32 x 32 box for every frame. The edges sit at 18 of the 36 columns / rows of the resize, so the
  dark columns (rows) left of the crop's edge number 18 - x (18 - y); with the aspect kept (36 x
  144) the column edge would be 72 px in."""
  assert augment.paper_resize_side(224) == 256 and augment.paper_resize_side(32) == 36
  frames = _edge_frames()
  offsets = set()
  for seed in range(24):
    out = _paper_crop(frames, 32, seed)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, _paper_crop(frames, 32, seed))  # Deterministic per seed.
    x = 18 - (out[:, :, :, 0] < 127.5).sum(axis=2)  # (frames, rows): one x wherever we look.
    y = 18 - (out[:, :, :, 1] < 127.5).sum(axis=1)  # (frames, columns)
    assert len(np.unique(x)) == 1 and len(np.unique(y)) == 1  # The same crop for every frame.
    x, y = int(x.flat[0]), int(y.flat[0])
    assert 0 <= x <= 4 and 0 <= y <= 4  # Inside the 36 x 36 resize.
    np.testing.assert_allclose(out[:, 0, 0, 2], [0, 10, 20], atol=1e-4)  # Frame order kept.
    offsets.add((y, x))
  assert len(offsets) >= 10  # Seeds differ; 25 offsets are possible.


def test_paper_train_augment_in_the_pipeline(cfg):
  """train_augment='paper' on tiny: layout, masks follow the crop, another stream than TSM's."""
  tsm = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 3)
  cfg.dataset.train_augment = "paper"
  cfg.dataset.flip = True
  paper = take(pipeline.create_train_iterator(cfg, num_local_devices=1), 3)
  for a, b in zip(tsm, paper):
    np.testing.assert_array_equal(a["index"], b["index"])
    assert b["frames"].shape == a["frames"].shape == (1, 4, 4, 32, 32, 3)
    assert not np.array_equal(a["frames"], b["frames"])
  # Over all 12 clips: a clip with a magenta distractor scores low whatever the crop.
  agreement = target_colour_agreement(np.concatenate([b["frames"][0] for b in paper]),
                                      np.concatenate([b["target_mask"][0] for b in paper]))
  assert agreement > 0.8, agreement

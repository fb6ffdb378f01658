"""The synthetic_something benchmark: determinism, time-reversal pairs, masks, the tiny build."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from aknet_jax.data import synthetic_something as ss  # noqa: E402


def render(label, seed=0, frames=16, h=64, w=64):
  return ss.render_clip(label, np.random.default_rng([seed, label]), frames, h, w)


def defining_change(label, masks, traj):
  """The class-defining quantity's change from first to last frame, measured on the masks
  (centroid x / y, area) or, for rotation, on the trajectory's angle."""
  kind = label // 2
  if kind == 3:
    return traj["angle"][-1] - traj["angle"][0]
  ys, xs = np.mgrid[0:masks.shape[1], 0:masks.shape[2]]
  area = masks.reshape(len(masks), -1).sum(1).astype(float)
  if kind == 2:
    return area[-1] - area[0]
  coord = xs if kind == 0 else ys
  centroid = (masks * coord).reshape(len(masks), -1).sum(1) / area
  return centroid[-1] - centroid[0]


@pytest.mark.parametrize("label", range(8))
def test_class_motion_and_its_time_reversal(label):
  frames, masks, traj = render(label)
  assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
  assert masks.shape == (16, 64, 64) and set(np.unique(masks)) <= {0, 1}
  diameter = 2 * np.sqrt(masks.sum(axis=(1, 2)) / np.pi)
  assert 4 <= diameter.min() and diameter.max() <= 15  # A small target (~8-12 px).
  change = defining_change(label, masks, traj)
  # Even labels increase the quantity (right, down, bigger, clockwise), odd ones decrease it.
  assert (change > 0) == (label % 2 == 0) and abs(change) > 1
  # Played backwards, the clip shows its pair's motion: reversing time changes the label.
  reversed_traj = {k: v[::-1] for k, v in traj.items()}
  assert np.sign(defining_change(label ^ 1, masks[::-1], reversed_traj)) == -np.sign(change)
  pair = render(label ^ 1, seed=5)
  assert np.sign(defining_change(label ^ 1, pair[1], pair[2])) == -np.sign(change)


def test_target_pixels_and_distractors():
  frames, masks, _ = render(6)
  target = frames[masks.astype(bool)].astype(int)
  colours = np.array(ss.TARGET_COLOURS)
  nearest = np.abs(target[:, None, :] - colours[None]).sum(-1).min(1)
  assert (nearest == 0).mean() > 0.95  # The pinwheel's two colours, on top of everything.
  assert (np.abs(frames[1:].astype(int) - frames[:-1]) > 30)[~masks[1:].astype(bool)].any()


def test_deterministic_from_seed():
  a, b = render(3, seed=1), render(3, seed=1)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], render(3, seed=2)[0])


def test_tiny_build(tiny_data_dir):
  builder = tfds.builder("synthetic_something", data_dir=tiny_data_dir, config="tiny")
  info = builder.info
  assert info.splits["train"].num_examples == 32 and info.splits["validation"].num_examples == 16
  assert info.features["label"].names == list(ss.CLASSES)
  examples = list(builder.as_data_source("validation"))
  assert sorted(int(e["label"]) for e in examples) == sorted(i % 8 for i in range(16))
  by_id = {e["id"].decode(): e for e in examples}
  ex = by_id["validation_000005"]
  cfg = builder.builder_config
  frames, masks, _ = ss.render_clip(5, np.random.default_rng([cfg.seed, 1, 5]), 12, 32, 48)
  assert int(ex["num_frames"]) == 12 and len(ex["frames"]) == 12
  stored = np.stack(ex["frames"]).astype(float)
  assert stored.shape == (12, 32, 48, 3)
  assert np.abs(stored - frames).mean() < 4  # JPEG q95 tolerance.
  np.testing.assert_array_equal(np.stack(ex["masks"])[..., 0] > 127, masks.astype(bool))


def test_hard_config_classes_masks_and_determinism(tmp_path):
  builder = tfds.builder("synthetic_something", data_dir=str(tmp_path), config="hard")
  assert builder.info.features["label"].names == list(ss.HARD_CLASSES)
  assert len(ss.HARD_CLASSES) == 16 and ss.HARD_CLASSES[:8] == ss.CLASSES
  examples = list(builder._generate_examples("validation", 32))  # Not prepared: 32 clips only.
  assert sorted({int(e["label"]) for _, e in examples}) == list(range(16))
  again = dict(builder._generate_examples("validation", 2))
  assert again["validation_000001"]["frames"] == dict(examples)["validation_000001"]["frames"]
  train = dict(builder._generate_examples("train", 2))
  assert train["train_000001"]["frames"] != again["validation_000001"]["frames"]
  occluded = 0
  for label in range(16):
    rng = lambda: np.random.default_rng([0, 1, label])  # noqa: E731
    frames, masks, traj = ss.render_hard_clip(label, rng(), 16, 64, 64)
    frames2, masks2, _ = ss.render_hard_clip(label, rng(), 16, 64, 64)
    np.testing.assert_array_equal(frames, frames2)
    np.testing.assert_array_equal(masks, masks2)
    assert set(np.unique(masks)) <= {0, 1}
    # The mask is the target's visible part: inside its disc, in the pinwheel's two colours.
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    disc = ((xx[None] - traj["x"][:, None, None]) ** 2 + (yy[None] - traj["y"][:, None, None]) ** 2
            <= traj["radius"][:, None, None] ** 2)
    assert not (masks.astype(bool) & ~disc).any()
    visible = frames[masks.astype(bool)].astype(int)
    colours = np.array(ss.TARGET_COLOURS)
    assert (np.abs(visible[:, None] - colours[None]).sum(-1).min(1) == 0).all()
    occluded += int((masks.sum(axis=(1, 2)) < disc.sum(axis=(1, 2))).any())
    assert 2 * np.sqrt(disc.sum(axis=(1, 2)).max() / np.pi) <= 11.5  # Default: up to 14 px.
    # Odd labels are the even label's clip reversed: the centre moves the other way.
    kind, sign = label // 2, 1 if label % 2 == 0 else -1
    dx, dy = traj["x"][-1] - traj["x"][0], traj["y"][-1] - traj["y"][0]
    if kind in (0, 6):
      assert sign * dx > 5
    elif kind in (1, 7):
      assert sign * dy > 5
    elif kind in (4, 5):
      assert sign * dy > 5 and sign * dx * (1 if kind == 4 else -1) > 5
    if kind in (6, 7):  # Accelerating: the second half of the clip travels farther than the first.
      pos = traj["x"] if kind == 6 else traj["y"]
      first, second = abs(pos[8] - pos[0]), abs(pos[15] - pos[8])
      assert (second > first) == (label % 2 == 0)
  assert occluded >= 4  # Occluders and distractors in front hide part of the target.

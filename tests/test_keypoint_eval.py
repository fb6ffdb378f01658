"""Keypoint precision and overlays map feature cells to the right pixels and frames."""

import numpy as np
import pytest

from aknet_jax import visualize
from aknet_jax.train import evaluate


def test_precision_scores_cell_coverage_and_chance_is_the_area_fraction():
  stride, t, s = 8, 3, 32
  mask = np.zeros((t, s, s), np.float32)
  mask[1, 8:16, 16:24] = 1.0  # Exactly cell (x=2, y=1) of frame 1.
  mask[2, 0:4, 0:8] = 1.0  # Half of cell (0, 0) of frame 2.
  on = np.array([[2, 1, 1]])
  assert evaluate.keypoint_coverage(on, mask, stride)[0] == 1.0
  assert evaluate.keypoint_coverage(np.array([[2, 1, 0]]), mask, stride)[0] == 0.0  # Wrong frame.
  assert evaluate.keypoint_coverage(np.array([[1, 2, 1]]), mask, stride)[0] == 0.0  # x/y swapped.
  p, chance = evaluate.keypoint_coverage(np.array([[2, 1, 1], [0, 0, 2]]), mask, stride)
  assert p == 0.75
  assert chance == mask.mean()


def test_overlay_marks_the_cell_centre_of_the_right_frame():
  stride, t, s = 8, 3, 32
  frames = np.zeros((t, s, s, 3), np.float32) - 5.0  # Normalised values that decode to black.
  marked = visualize.keypoint_frames(frames, np.array([[3, 0, 2]]), stride)
  red = marked[..., 0] > 128
  assert not red[0].any() and not red[1].any()
  ys, xs = np.nonzero(red[2])
  assert 0 <= ys.min() and ys.max() < 8 and 24 <= xs.min() and xs.max() < 32  # Inside cell (3, 0).
  cx, cy = visualize.point_to_pixel(3, 0, stride)
  assert red[2, int(round(cy)), int(round(cx))]
  strip = visualize.keypoint_overlay(frames, np.array([[3, 0, 2]]), stride)
  assert strip.shape == (s, t * s, 3) and strip.dtype == np.uint8


def test_overlay_uses_the_centre_frame_of_each_tdn_segment():
  frames = np.full((2 * 5, 16, 16, 3), -5.0, np.float32)
  frames[2] = 5.0  # The centre (RGB) frame of segment 0 is white: it must be the one shown.
  marked = visualize.keypoint_frames(frames, np.zeros((0, 3), int), 8, frames_per_segment=5)
  assert marked.shape == (2, 16, 16, 3)
  assert marked[0].min() == 255 and marked[1].max() == 0


def test_points_per_frame_correlates_counts_with_visible_area():
  t, s = 4, 16
  mask = np.zeros((t, s, s), np.float32)
  for f, rows in enumerate((1, 2, 3, 4)):  # Visible area 16, 32, 48, 64 pixels.
    mask[f, :rows, :] = 1.0
  # 1, 2, 3, 4 points in frames 0..3: counts proportional to the area, correlation 1.
  xyt = np.array([[0, 0, f] for f in range(t) for _ in range(f + 1)])
  corr, cv = evaluate.points_per_frame(xyt, mask)
  assert corr == pytest.approx(1.0)
  counts = np.array([1.0, 2.0, 3.0, 4.0])
  assert cv == pytest.approx(counts.std() / counts.mean())
  reverse = np.array([[0, 0, t - 1 - p[2]] for p in xyt])  # Most points where the area is least.
  assert evaluate.points_per_frame(reverse, mask)[0] == pytest.approx(-1.0)
  # Equal counts per frame: cv 0 and no correlation (undefined); a constant area: the same.
  even = np.array([[0, 0, f] for f in range(t) for _ in range(2)])
  assert evaluate.points_per_frame(even, mask) == (None, 0.0)
  assert evaluate.points_per_frame(xyt, np.ones((t, s, s)))[0] is None
  # A frame with no points counts 0 (counts 0, 0, 2, 2 against areas 16..64).
  late = np.array([[0, 0, 2], [1, 0, 2], [0, 0, 3], [1, 0, 3]])
  corr, cv = evaluate.points_per_frame(late, mask)
  assert corr == pytest.approx(np.corrcoef([0, 0, 2, 2], [16, 32, 48, 64])[0, 1])
  assert cv == pytest.approx(1.0)

"""Keypoint overlays (PNG, GIF) land on the right cell and frame; the per-class bar chart."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aknet_jax import figures, models, visualize
from conftest import load_config

BLACK = -5.0  # A normalised value that decodes to 0 in every channel.


def _red(images):
  """Mask of the overlay's red dots (R high, G and B low) in uint8 RGB images."""
  images = np.asarray(images)
  return (images[..., 0] > 150) & (images[..., 1] < 100) & (images[..., 2] < 100)


@pytest.mark.parametrize("stride,size,frames_per_segment", [(8, 32, 1), (16, 64, 1), (4, 16, 5)])
def test_each_point_marks_its_cell_in_its_frame_only(stride, size, frames_per_segment):
  t = 3
  frames = np.full((t * frames_per_segment, size, size, 3), BLACK, np.float32)
  g = size // stride
  xyt = np.array([[0, 0, 0], [g - 1, 1, 1], [1, g - 1, 2], [g - 1, g - 1, 2]])
  marked = visualize.keypoint_frames(frames, xyt, stride, frames_per_segment)
  assert marked.shape == (t, size, size, 3) and marked.dtype == np.uint8
  red = _red(marked)
  for f in range(t):
    # Every red pixel of frame f belongs to the cell block of one of frame f's points, and every
    # such point has red pixels around its block's centre.
    blocks = np.zeros((size, size), bool)
    for x, y, _ in xyt[xyt[:, 2] == f]:
      block = red[f, y * stride:(y + 1) * stride, x * stride:(x + 1) * stride]
      assert block.any(), (x, y, f)
      ys, xs = np.nonzero(block)
      assert abs(ys.mean() - (stride - 1) / 2) <= 1 and abs(xs.mean() - (stride - 1) / 2) <= 1
      blocks[y * stride:(y + 1) * stride, x * stride:(x + 1) * stride] = True
    assert not (red[f] & ~blocks).any(), f"frame {f} has red outside its points' cells"


def test_point_to_pixel_is_within_half_a_cell_of_the_measured_receptive_field_centre():
  """Independent reference: the support of d feature[y, x] / d input of the real backbone."""
  cfg = load_config("synthetic", "tiny,backbone=tsn,segments=1,image_size=64")
  assert cfg.dataset.resize_short == 64
  model = models.build(cfg, "backbone")
  image = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 64, 64, 3))
  stride, cell = 4, 7  # res2: cell 7's receptive field is [7, 49], inside the 64 px image.
  variables = model.init(jax.random.PRNGKey(0), image, train=False, upto="res2")
  grad = jax.grad(lambda f: jnp.sum(
      model.apply(variables, f, train=False, upto="res2")[0, cell, cell]))(image)
  support = np.abs(np.asarray(grad[0, 0])).sum(-1) > 0
  cols, rows = np.flatnonzero(support.any(0)), np.flatnonzero(support.any(1))
  assert 0 < cols[0] and cols[-1] < 63  # The receptive field is not clipped by the border.
  centre_x, centre_y = (cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2
  assert (centre_x, centre_y) == (cell * stride, cell * stride)  # Symmetric padding throughout.
  px, py = visualize.point_to_pixel(cell, cell, stride)
  assert abs(px - centre_x) <= stride / 2 and abs(py - centre_y) <= stride / 2

def test_save_keypoint_clips_writes_png_strips_grid_and_gifs(tmp_path):
  stride, size, t = 8, 32, 4
  rng = np.random.default_rng(0)
  clips = []
  for i in range(2):
    frames = np.full((t, size, size, 3), BLACK, np.float32)
    xyt = np.stack([rng.integers(0, 4, 5), rng.integers(0, 4, 5), np.arange(5) % t], axis=1)
    clips.append((frames, xyt))
  strips = visualize.save_keypoint_clips(str(tmp_path), clips, stride, captions=["a", "b"])
  assert [s.shape for s in strips] == [(size, t * size, 3)] * 2
  grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
  np.testing.assert_array_equal(grid, np.concatenate(strips, axis=0))
  for i, (frames, xyt) in enumerate(clips):
    gif = Image.open(tmp_path / f"clip_{i:03d}.gif")
    shown = []  # Segment by segment: Pillow merges identical consecutive frames, adding durations.
    for f in range(gif.n_frames):
      gif.seek(f)
      shown += [_red(gif.convert("RGB"))] * round(gif.info["duration"] / 250)  # 4 fps.
    expected = visualize.keypoint_frames(frames, xyt, stride)
    assert len(shown) == t
    for f in range(t):
      np.testing.assert_array_equal(shown[f], _red(expected[f]))
  assert (tmp_path / "captions.txt").read_text().splitlines() == ["clip_000.png: a",
                                                                  "clip_001.png: b"]


def test_per_class_bar_chart_orders_by_gain_and_skips_empty_classes(tmp_path):
  ak = {"0": {"accuracy": 0.5, "num_examples": 2}, "1": {"accuracy": 1.0, "num_examples": 1},
        "2": {"accuracy": None, "num_examples": 0}, "3": {"accuracy": 0.25, "num_examples": 4}}
  base = {"0": {"accuracy": 0.5, "num_examples": 2}, "1": {"accuracy": 0.0, "num_examples": 1},
          "2": {"accuracy": None, "num_examples": 0}, "3": {"accuracy": 0.75, "num_examples": 4}}
  paths = []
  for name, table in (("ak", ak), ("base", base)):
    paths.append(tmp_path / f"{name}.json")
    paths[-1].write_text(json.dumps(table))
  acc, ref = figures.read_per_class(str(paths[0])), figures.read_per_class(str(paths[1]))
  assert np.isnan(acc[2]) and acc[1] == 1.0
  out = tmp_path / "fig4.png"
  shown = figures.per_class_figure(acc, str(out), baseline=ref, class_names=list("abcd"))
  assert shown == [1, 0, 3]  # Gains +1.0, 0, -0.5; class 2 has no examples.
  assert Image.open(out).size[0] > 100
  assert figures.per_class_figure(acc, str(out), max_classes=2) == [1, 3]  # Best and worst.
  bad = tmp_path / "bad.json"
  bad.write_text("[1, 2]")
  with pytest.raises(ValueError, match="bad.json"):
    figures.read_per_class(str(bad))

"""`synthetic_something`: a generated video benchmark that needs temporal reasoning.

Each clip: a cluttered static background, 2-4 distractor shapes moving at random, and one small
two-coloured pinwheel (the target, ~8-12 px at 64x64) whose motion defines the class. The 8 classes
are 4 time-reversal pairs (label ^ 1 is the reversed clip's label), so a model without temporal
modelling cannot tell the members of a pair apart. Per-frame binary target masks are stored too.
Everything derives from (seed, split, example index): no download, deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from aknet_jax.data import video_builder
from aknet_jax.data import video_io

CLASSES = (
    "moving left to right", "moving right to left",
    "moving top to bottom", "moving bottom to top",
    "approaching", "receding",
    "rotating clockwise", "rotating anticlockwise",
)
TARGET_COLOURS = ((255, 0, 200), (255, 255, 255))  # Alternate quadrants of the pinwheel.
_SPLIT_CODES = {"train": 0, "validation": 1}


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Sizes of the generated dataset."""
  num_train: int = 2000
  num_validation: int = 400
  num_frames: int = 16
  height: int = 64
  width: int = 64
  seed: int = 0


def target_trajectory(label: int, rng: np.random.Generator, num_frames: int, height: int,
                      width: int) -> dict[str, np.ndarray]:
  """Per-frame target centre (x, y), radius and pinwheel angle (radians) for class `label`.

  Odd labels are the even label's trajectory played backwards; the start position is random.
  """
  s = min(height, width) / 64.0
  frac = np.linspace(0.0, 1.0, num_frames)
  if label % 2:
    frac = frac[::-1]
  kind = label // 2
  r = np.full(num_frames, rng.uniform(4.0, 6.0) * s)
  angle = np.full(num_frames, rng.uniform(0, 2 * np.pi))
  if kind == 2:  # Approaching / receding: the radius grows / shrinks, the centre stays.
    small, big = rng.uniform(2.5, 3.5) * s, rng.uniform(6.0, 7.0) * s
    r = small + (big - small) * frac
  margin = r.max() + 1.0
  x = np.full(num_frames, rng.uniform(margin, width - margin))
  y = np.full(num_frames, rng.uniform(margin, height - margin))
  if kind in (0, 1):  # Left -> right / top -> bottom over 35-55% of the frame.
    length = width if kind == 0 else height
    travel = rng.uniform(0.35, 0.55) * length
    start = rng.uniform(margin, length - margin - travel)
    if kind == 0:
      x = start + travel * frac
    else:
      y = start + travel * frac
  elif kind == 3:  # Clockwise on screen (y points down) = increasing angle; 12-20 deg per frame.
    step = np.deg2rad(rng.uniform(12.0, 20.0))
    angle = angle[0] + step * (num_frames - 1) * frac
  return {"x": x, "y": y, "radius": r, "angle": angle}


def _background(rng, height, width):
  """Smooth colour field + random muted blobs + pixel noise, float32 (H, W, 3)."""
  coarse = rng.uniform(50, 180, size=(4, 4, 3)).astype(np.uint8)
  bg = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  s = min(height, width) / 64.0
  for _ in range(rng.integers(8, 16)):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(2, 8, size=2) * s
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    bg[inside] = rng.uniform(30, 200, size=3)
  bg += rng.normal(0, 6, size=bg.shape)
  return bg


def _distractors(rng, num_frames, height, width):
  """2-4 solid shapes moving in random straight lines, bouncing off the borders."""
  s = min(height, width) / 64.0
  out = []
  for _ in range(rng.integers(2, 5)):
    size = rng.uniform(3.0, 6.0) * s
    pos = np.array([rng.uniform(size, width - size), rng.uniform(size, height - size)])
    direction = rng.uniform(0, 2 * np.pi)
    vel = rng.uniform(0.5, 2.0) * s * np.array([np.cos(direction), np.sin(direction)])
    path = []
    for _ in range(num_frames):
      path.append(pos.copy())
      pos += vel
      for d, hi in ((0, width), (1, height)):
        if not size <= pos[d] <= hi - size:
          vel[d] = -vel[d]
          pos[d] = np.clip(pos[d], size, hi - size)
    out.append({"shape": rng.integers(0, 3), "size": size, "path": np.array(path),
                "colour": rng.uniform(20, 235, size=3)})
  return out


def _shape_mask(shape, cx, cy, size, yy, xx):
  dx, dy = xx - cx, yy - cy
  if shape == 0:
    return dx * dx + dy * dy <= size * size
  if shape == 1:
    return (np.abs(dx) <= size * 0.8) & (np.abs(dy) <= size * 0.8)
  return (dy <= size * 0.7) & (dy >= 2.0 * np.abs(dx) - size)  # Triangle pointing up.


def render_clip(label: int, rng: np.random.Generator, num_frames: int, height: int, width: int):
  """Renders one clip: frames (F, H, W, 3) uint8, masks (F, H, W) uint8 in {0, 1}, trajectory."""
  traj = target_trajectory(label, rng, num_frames, height, width)
  bg = _background(rng, height, width)
  distractors = _distractors(rng, num_frames, height, width)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  masks = np.empty((num_frames, height, width), np.uint8)
  colours = np.array(TARGET_COLOURS, np.float32)
  for t in range(num_frames):
    frame = bg.copy()
    for d in distractors:
      cx, cy = d["path"][t]
      frame[_shape_mask(d["shape"], cx, cy, d["size"], yy, xx)] = d["colour"]
    dx, dy = xx - traj["x"][t], yy - traj["y"][t]
    disc = dx * dx + dy * dy <= traj["radius"][t] ** 2
    quadrant = np.floor(np.mod(np.arctan2(dy, dx) - traj["angle"][t], 2 * np.pi) / (np.pi / 2))
    frame[disc] = colours[quadrant[disc].astype(np.int64) % 2]
    frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    masks[t] = disc
  return frames, masks, traj


class SyntheticSomething(video_builder.ClipBuilder):
  """Generated 8-class temporal benchmark with target masks (configs: default, tiny)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="2000/400 clips of 16 frames at 64x64."),
      SyntheticConfig(name="tiny", num_train=32, num_validation=16, num_frames=12, height=32,
                      width=48, description="For tests: 32/16 clips of 12 frames at 32x48."),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        features=video_builder.clip_features(tfds.features.ClassLabel(names=CLASSES),
                                             with_masks=True),
        description=__doc__)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    cfg = self.builder_config
    for i in range(num_examples):
      label = i % len(CLASSES)
      rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], i])
      frames, masks, _ = render_clip(label, rng, cfg.num_frames, cfg.height, cfg.width)
      clip_id = f"{split}_{i:06d}"
      self._split_report(split)["num_examples"] += 1
      yield clip_id, {
          "id": clip_id,
          "label": label,
          "num_frames": cfg.num_frames,
          "frames": [video_io.encode_jpeg(f, quality=95, subsampling=0) for f in frames],
          "masks": [video_io.encode_png(m * 255) for m in masks],
      }

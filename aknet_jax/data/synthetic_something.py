"""`synthetic_something`: a generated video benchmark that needs temporal reasoning.

Each clip: a cluttered static background, 2-4 distractor shapes moving at random, and one small
two-coloured pinwheel (the target, ~8-12 px at 64x64) whose motion defines the class. The 8 classes
are 4 time-reversal pairs (label ^ 1 is the reversed clip's label), so a model without temporal
modelling cannot tell the members of a pair apart. Per-frame binary target masks are stored too.
Everything derives from (seed, split, example index): no download, deterministic.

The `hard` config (16 classes, `HARD_CLASSES`) adds diagonal motions and accelerating /
decelerating slides (which differ from the constant-speed slides only in their speed profile), a
smaller target (radius 3.5-5 px at 64², vs 4-6), variable speed (random travel, jittered
progress), 3-5 distractors (in half of the clips one solid in a target colour), distractors that
pass in front of the target and, in half of the clips, a static occluding bar: its masks are the
target's *visible* pixels.
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
HARD_CLASSES = CLASSES + (
    "moving diagonally down-right", "moving diagonally up-left",
    "moving diagonally down-left", "moving diagonally up-right",
    "accelerating left to right", "decelerating right to left",
    "accelerating top to bottom", "decelerating bottom to top",
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
  hard: bool = False  # The 16-class `hard` benchmark (`render_hard_clip`).


def class_names(hard: bool) -> tuple[str, ...]:
  return HARD_CLASSES if hard else CLASSES


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


def _bouncing_path(rng, size, top_speed, scale, num_frames, height, width) -> np.ndarray:
  """(num_frames, 2) centres of a shape of half-size `size` from a random place along a random
  straight line at 0.5..top_speed (x scale) px/frame, bouncing off the borders."""
  pos = np.array([rng.uniform(size, width - size), rng.uniform(size, height - size)])
  direction = rng.uniform(0, 2 * np.pi)
  vel = rng.uniform(0.5, top_speed) * scale * np.array([np.cos(direction), np.sin(direction)])
  path = []
  for _ in range(num_frames):
    path.append(pos.copy())
    pos += vel
    for d, hi in ((0, width), (1, height)):
      if not size <= pos[d] <= hi - size:
        vel[d] = -vel[d]
        pos[d] = np.clip(pos[d], size, hi - size)
  return np.array(path)


def _distractors(rng, num_frames, height, width):
  """2-4 solid shapes moving in random straight lines, bouncing off the borders."""
  s = min(height, width) / 64.0
  out = []
  for _ in range(rng.integers(2, 5)):
    size = rng.uniform(3.0, 6.0) * s
    path = _bouncing_path(rng, size, 2.0, s, num_frames, height, width)
    out.append({"shape": rng.integers(0, 3), "size": size, "path": path,
                "colour": rng.uniform(20, 235, size=3)})
  return out


def _shape_mask(shape, cx, cy, size, yy, xx):
  dx, dy = xx - cx, yy - cy
  if shape == 0:
    return dx * dx + dy * dy <= size * size
  if shape == 1:
    return (np.abs(dx) <= size * 0.8) & (np.abs(dy) <= size * 0.8)
  return (dy <= size * 0.7) & (dy >= 2.0 * np.abs(dx) - size)  # Triangle pointing up.


def _draw_pinwheel(frame, traj, t, yy, xx) -> np.ndarray:
  """Paints the target of frame t (quadrants alternating TARGET_COLOURS) into `frame`; returns
  its disc (H, W) bool."""
  dx, dy = xx - traj["x"][t], yy - traj["y"][t]
  disc = dx * dx + dy * dy <= traj["radius"][t] ** 2
  quadrant = np.floor(np.mod(np.arctan2(dy, dx) - traj["angle"][t], 2 * np.pi) / (np.pi / 2))
  frame[disc] = np.array(TARGET_COLOURS, np.float32)[quadrant[disc].astype(np.int64) % 2]
  return disc


def render_clip(label: int, rng: np.random.Generator, num_frames: int, height: int, width: int):
  """Renders one clip: frames (F, H, W, 3) uint8, masks (F, H, W) uint8 in {0, 1}, trajectory."""
  traj = target_trajectory(label, rng, num_frames, height, width)
  bg = _background(rng, height, width)
  distractors = _distractors(rng, num_frames, height, width)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  masks = np.empty((num_frames, height, width), np.uint8)
  for t in range(num_frames):
    frame = bg.copy()
    for d in distractors:
      cx, cy = d["path"][t]
      frame[_shape_mask(d["shape"], cx, cy, d["size"], yy, xx)] = d["colour"]
    disc = _draw_pinwheel(frame, traj, t, yy, xx)
    frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    masks[t] = disc
  return frames, masks, traj


def hard_trajectory(label: int, rng: np.random.Generator, num_frames: int, height: int,
                    width: int) -> dict[str, np.ndarray]:
  """The `hard` config's per-frame target centre, radius and angle for class `label` (0-15).

  Labels 0-7 move as in `target_trajectory`, with a smaller target and variable speed; 8-11 move
  diagonally; 12-15 slide left->right / top->bottom with progress t**2.2 (accelerating), played
  backwards (decelerating) for odd labels. Odd labels are the even label's clip played backwards.
  """
  s = min(height, width) / 64.0
  # Variable speed: progress is monotone but jittered from frame to frame.
  steps_ = rng.uniform(0.6, 1.4, size=num_frames - 1)
  frac = np.concatenate([[0.0], np.cumsum(steps_) / steps_.sum()])
  kind = label // 2
  if kind in (6, 7):
    frac = frac ** 2.2
  if label % 2:
    frac = frac[::-1]
  r = np.full(num_frames, rng.uniform(3.5, 5.0) * s)
  angle = np.full(num_frames, rng.uniform(0, 2 * np.pi))
  if kind == 2:
    small, big = rng.uniform(2.5, 3.0) * s, rng.uniform(5.0, 5.5) * s
    r = small + (big - small) * frac
  margin = r.max() + 1.0
  x = np.full(num_frames, rng.uniform(margin, width - margin))
  y = np.full(num_frames, rng.uniform(margin, height - margin))
  if kind in (0, 1, 6, 7):
    horizontal = kind in (0, 6)
    length = width if horizontal else height
    travel = rng.uniform(0.3, 0.6) * length
    start = rng.uniform(margin, length - margin - travel)
    if horizontal:
      x = start + travel * frac
    else:
      y = start + travel * frac
  elif kind in (4, 5):  # Down-right (+x, +y) / down-left (-x, +y).
    travel = rng.uniform(0.3, 0.5) * min(height, width)
    sx = 1.0 if kind == 4 else -1.0
    x0 = rng.uniform(margin, width - margin - travel)
    if sx < 0:
      x0 = width - x0
    y0 = rng.uniform(margin, height - margin - travel)
    x = x0 + sx * travel * frac
    y = y0 + travel * frac
  elif kind == 3:
    step = np.deg2rad(rng.uniform(12.0, 24.0))
    angle = angle[0] + step * (num_frames - 1) * frac
  return {"x": x, "y": y, "radius": r, "angle": angle}


def _hard_distractors(rng, num_frames, height, width):
  """3-5 distractors (in half of the clips one of them solid in one of the target's colours), each
  behind or (one in five) in front of the target."""
  s = min(height, width) / 64.0
  out = []
  n = int(rng.integers(3, 6))
  decoys = int(rng.uniform() < 0.5)
  for i in range(n):
    size = rng.uniform(2.5, 6.0) * s
    path = _bouncing_path(rng, size, 2.5, s, num_frames, height, width)
    colour = (np.array(TARGET_COLOURS[int(rng.integers(0, 2))], np.float64) if i < decoys
              else rng.uniform(20, 235, size=3))
    out.append({"shape": rng.integers(0, 3), "size": size, "path": path,
                "colour": colour, "front": bool(rng.uniform() < 0.2)})
  return out


def _occluders(rng, height, width):
  """In half of the clips one static bar drawn over everything: (y0, y1, x0, x1, rgb)."""
  s = min(height, width) / 64.0
  out = []
  if rng.uniform() < 0.5:
    for _ in range(1):
      long_, short = rng.uniform(8, 16) * s, rng.uniform(3, 5) * s
      bh, bw = (long_, short) if rng.uniform() < 0.5 else (short, long_)
      y0, x0 = rng.uniform(0, height - bh), rng.uniform(0, width - bw)
      out.append((int(y0), int(y0 + bh), int(x0), int(x0 + bw), rng.uniform(30, 200, size=3)))
  return out


def render_hard_clip(label: int, rng: np.random.Generator, num_frames: int, height: int,
                     width: int):
  """One clip of the `hard` config: frames (F, H, W, 3) uint8, masks of the target's visible
  pixels (F, H, W) uint8 in {0, 1}, trajectory."""
  traj = hard_trajectory(label, rng, num_frames, height, width)
  bg = _background(rng, height, width)
  distractors = _hard_distractors(rng, num_frames, height, width)
  occluders = _occluders(rng, height, width)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  masks = np.empty((num_frames, height, width), np.uint8)
  for t in range(num_frames):
    frame = bg.copy()
    for d in distractors:
      if not d["front"]:
        cx, cy = d["path"][t]
        frame[_shape_mask(d["shape"], cx, cy, d["size"], yy, xx)] = d["colour"]
    visible = _draw_pinwheel(frame, traj, t, yy, xx)
    for d in distractors:
      if d["front"]:
        cx, cy = d["path"][t]
        cover = _shape_mask(d["shape"], cx, cy, d["size"], yy, xx)
        frame[cover] = d["colour"]
        visible &= ~cover
    for y0, y1, x0, x1, colour in occluders:
      frame[y0:y1, x0:x1] = colour
      visible[y0:y1, x0:x1] = False
    frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    masks[t] = visible
  return frames, masks, traj


class SyntheticSomething(video_builder.ClipBuilder):
  """Generated temporal benchmark with target masks (configs: default, tiny: 8 classes; hard: 16)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="2000/400 clips of 16 frames at 64x64."),
      SyntheticConfig(name="tiny", num_train=32, num_validation=16, num_frames=12, height=32,
                      width=48, description="For tests: 32/16 clips of 12 frames at 32x48."),
      SyntheticConfig(name="hard", hard=True,
                      description="16 classes, 2000/400 clips of 16 frames at 64x64: smaller "
                      "target, target-coloured distractors, occlusion, variable speed."),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        features=video_builder.clip_features(
            tfds.features.ClassLabel(names=class_names(self.builder_config.hard)),
            with_masks=True),
        description=__doc__)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    cfg = self.builder_config
    num_classes = len(class_names(cfg.hard))
    render = render_hard_clip if cfg.hard else render_clip
    for i in range(num_examples):
      label = i % num_classes
      rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], i])
      frames, masks, _ = render(label, rng, cfg.num_frames, cfg.height, cfg.width)
      clip_id = f"{split}_{i:06d}"
      self._split_report(split)["num_examples"] += 1
      yield clip_id, {
          "id": clip_id,
          "label": label,
          "num_frames": cfg.num_frames,
          "frames": [video_io.encode_jpeg(f, quality=95, subsampling=0) for f in frames],
          "masks": [video_io.encode_png(m * 255) for m in masks],
      }

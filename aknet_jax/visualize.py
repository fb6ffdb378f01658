"""Keypoint overlays: the selected points of a clip drawn on its frames (PNG grid, GIF).

A point at feature cell (x, y, t) is drawn on segment t's (centre) frame at the centre of the
stride x stride pixel block the cell covers, the block `evaluate.keypoint_coverage` scores.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from aknet_jax.data import augment

_COLOR = np.array([255, 40, 40], np.uint8)


def point_to_pixel(x, y, stride: int):
  """Centre, in pixels, of feature cell (x, y) of a map with total stride `stride`."""
  return (np.asarray(x) + 0.5) * stride - 0.5, (np.asarray(y) + 0.5) * stride - 0.5


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float frames -> uint8 RGB."""
  mean = np.asarray(augment.MEAN_RGB, np.float32)
  std = np.asarray(augment.STDDEV_RGB, np.float32)
  return np.clip((frames * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def keypoint_frames(frames: np.ndarray, xyt: np.ndarray, stride: int,
                    frames_per_segment: int = 1) -> np.ndarray:
  """(T, S, S, 3) uint8: each segment's centre frame with its keypoints marked.

  frames: (T*L, S, S, 3) normalised; xyt: (N, 3) integer feature-cell coordinates (x, y, t).
  A point is drawn as a filled dot of radius stride/4 (at least 1 px) at its cell centre.
  """
  l = frames_per_segment
  centre = to_uint8(frames[l // 2::l])
  out = []
  radius = max(1.0, stride / 4)
  for t, img in enumerate(centre):
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    pts = xyt[xyt[:, 2] == t]
    px, py = point_to_pixel(pts[:, 0], pts[:, 1], stride)
    for cx, cy in zip(px, py):
      draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=tuple(_COLOR))
    out.append(np.asarray(pil))
  return np.stack(out)


def keypoint_overlay(frames: np.ndarray, xyt: np.ndarray, stride: int,
                     frames_per_segment: int = 1) -> np.ndarray:
  """(S, T*S, 3) uint8: the marked frames of `keypoint_frames` side by side."""
  marked = keypoint_frames(frames, xyt, stride, frames_per_segment)
  return np.concatenate(list(marked), axis=1)


def save_png_grid(directory: str, strips: list[np.ndarray], captions: list[str] | None = None):
  """Writes one PNG per clip strip (clip_000.png, ...) and a grid of all of them (grid.png)."""
  os.makedirs(directory, exist_ok=True)
  for i, strip in enumerate(strips):
    Image.fromarray(strip).save(os.path.join(directory, f"clip_{i:03d}.png"))
  grid = np.concatenate(strips, axis=0)
  Image.fromarray(grid).save(os.path.join(directory, "grid.png"))
  if captions:
    with open(os.path.join(directory, "captions.txt"), "w") as f:
      f.write("\n".join(f"clip_{i:03d}.png: {c}" for i, c in enumerate(captions)) + "\n")


def save_gif(path: str, marked_frames: np.ndarray, fps: float = 4.0):
  """Writes (T, S, S, 3) uint8 frames as a looping animated GIF."""
  images = [Image.fromarray(f) for f in marked_frames]
  images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                 duration=int(1000 / fps))


def save_keypoint_clips(directory: str, clips: list[tuple[np.ndarray, np.ndarray]], stride: int,
                        frames_per_segment: int = 1,
                        captions: list[str] | None = None) -> list[np.ndarray]:
  """Writes each clip's keypoints as clip_NNN.png (frames side by side) and clip_NNN.gif, plus
  grid.png of all clips; returns the strips (for TensorBoard).

  clips: (frames (T*L, S, S, 3) normalised, xyt (N, 3) feature-cell coordinates) per clip.
  """
  marked = [keypoint_frames(f, xyt, stride, frames_per_segment) for f, xyt in clips]
  strips = [np.concatenate(list(m), axis=1) for m in marked]
  save_png_grid(directory, strips, captions)
  for i, m in enumerate(marked):
    save_gif(os.path.join(directory, f"clip_{i:03d}.gif"), m)
  return strips

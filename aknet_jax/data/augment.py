"""Spatial transforms of a clip (N, H, W, C) as TF ops: TSM train/test crops, the paper's train
crop, flip, normalise.

One crop box and one flip decision per clip, applied to every frame (and to the mask channel that
the pipeline stacks behind RGB, so masks follow frames exactly).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)

# TSM GroupMultiScaleCrop(fix_crop=True, more_fix_crop=True): the 13 offsets in units of
# ((W - w) // 4, (H - h) // 4).
FIXED_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                 (1, 1), (3, 1), (1, 3), (3, 3))


def crop_size_pairs(scales: Sequence[float], max_distort: int = 1) -> list[tuple[int, int]]:
  """(height index, width index) into `scales` of every allowed crop shape, TSM's order."""
  n = len(scales)
  return [(i, j) for i in range(n) for j in range(n) if abs(i - j) <= max_distort]


def multiscale_crop_box(height, width, image_size: int, scales: Sequence[float], seed):
  """TSM GroupMultiScaleCrop box (y, x, h, w) for a (height, width) frame; int32 scalars.

  Candidate sides int(min(H, W) * scale), snapped to `image_size` within 3 px; one of the
  (w, h) pairs with |i - j| <= 1 and one of the 13 fixed offsets, each uniformly at random.
  """
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  base = tf.cast(tf.minimum(height, width), tf.float64)
  sizes = tf.cast(base * tf.constant(scales, tf.float64), tf.int32)
  sizes = tf.where(tf.abs(sizes - image_size) < 3, image_size, sizes)
  pairs = crop_size_pairs(scales)
  seed_pair, seed_offset = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  p = tf.random.stateless_uniform([], seed_pair, 0, len(pairs), dtype=tf.int32)
  crop_h = tf.minimum(tf.gather(sizes, tf.gather([i for i, _ in pairs], p)), height)
  crop_w = tf.minimum(tf.gather(sizes, tf.gather([j for _, j in pairs], p)), width)
  q = tf.random.stateless_uniform([], seed_offset, 0, len(FIXED_OFFSETS), dtype=tf.int32)
  x = (width - crop_w) // 4 * tf.gather([ox for ox, _ in FIXED_OFFSETS], q)
  y = (height - crop_h) // 4 * tf.gather([oy for _, oy in FIXED_OFFSETS], q)
  return y, x, crop_h, crop_w


def paper_resize_side(image_size: int) -> int:
  """Side of the square each frame is resized to before the paper's crop: 256 for 224 (§IV-A);
  other crops scale it by image_size / 224, truncated as TSM's scale_size = crop * 256 // 224."""
  return image_size * 256 // 224


def paper_crop_box(image_size: int, seed):
  """(y, x, h, w) of the paper's train crop: image_size² at a uniform random offset (torchvision
  RandomCrop, both ends included) in the paper_resize_side² resized frame; int32 scalars."""
  room = paper_resize_side(image_size) - image_size
  y, x = tf.unstack(tf.random.stateless_uniform([2], seed, 0, room + 1, dtype=tf.int32))
  return y, x, image_size, image_size


def resize_and_crop(frames: tf.Tensor, side: int, box) -> tf.Tensor:
  """Resizes (N, H, W, C) frames to side x side (aspect ignored), then crops box; float32."""
  y, x, h, w = box
  return resize(frames, tf.constant([side, side]))[:, y:y + h, x:x + w, :]


def crop_and_resize(frames: tf.Tensor, box, size: int) -> tf.Tensor:
  """Crops box (y, x, h, w) of (N, H, W, C) frames and resizes it to (N, size, size, C) float32.

  Bilinear with an antialiasing filter when shrinking (as PIL's bilinear resize used by TSM).
  """
  y, x, h, w = box
  return resize(frames[:, y:y + h, x:x + w, :], tf.stack([size, size]))


def resize(frames: tf.Tensor, new_size) -> tf.Tensor:
  """Bilinear resize of (N, H, W, C) to float32 (N, *new_size, C), antialiased when shrinking.

  When enlarging, the antialiasing filter equals plain bilinear, so the cheaper op is used.
  """
  frames = tf.cast(frames, tf.float32)
  new_size = tf.cast(new_size, tf.int32)
  shrinks = tf.reduce_any(tf.shape(frames)[1:3] > new_size)
  return tf.cond(shrinks,
                 lambda: tf.image.resize(frames, new_size, method="bilinear", antialias=True),
                 lambda: tf.image.resize(frames, new_size, method="bilinear", antialias=False))


def short_side_size(height, width, short: int):
  """(new_h, new_w) with the short side = `short`, the long side truncated (torchvision Resize)."""
  height, width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  short = tf.constant(short, tf.float64)
  new_h = tf.where(height <= width, short, tf.floor(short * height / width))
  new_w = tf.where(height <= width, tf.floor(short * width / height), short)
  return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def resize_short_side(frames: tf.Tensor, short: int) -> tf.Tensor:
  """Resizes (N, H, W, C) frames so that the short side is `short`; float32 output."""
  shape = tf.shape(frames)
  return resize(frames, tf.stack(short_side_size(shape[1], shape[2], short)))


def centre_crop_offset(length, size: int):
  """torchvision CenterCrop offset: int(round((length - size) / 2)), round half to even."""
  return tf.cast(tf.round(tf.cast(length - size, tf.float64) / 2.0), tf.int32)


def eval_crops(frames: tf.Tensor, size: int, num_crops: int) -> list[tf.Tensor]:
  """Test-time crops of (N, H, W, C) frames (already resized): 1 = centre; 3 = TSM's
  GroupFullResSample order left, right, centre at (0, 2hs), (4ws, 2hs), (2ws, 2hs)."""
  shape = tf.shape(frames)
  h, w = shape[1], shape[2]
  if num_crops == 1:
    y, x = centre_crop_offset(h, size), centre_crop_offset(w, size)
    return [frames[:, y:y + size, x:x + size, :]]
  if num_crops != 3:
    raise ValueError(f"eval.num_crops: {num_crops!r} is not one of (1, 3)")
  ws, hs = (w - size) // 4, (h - size) // 4
  return [frames[:, 2 * hs:2 * hs + size, m * ws:m * ws + size, :] for m in (0, 4, 2)]


def flip_decision(seed, probability: float = 0.5) -> tf.Tensor:
  """One left-right flip decision (bool scalar) per clip."""
  return tf.random.stateless_uniform([], seed) < probability


def flip_if(frames: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
  """Flips (N, H, W, C) frames left-right when `flip` is True."""
  return tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)


def normalize(frames: tf.Tensor) -> tf.Tensor:
  """[0, 255] RGB -> ImageNet-normalised float32 ((x / 255 - mean) / std)."""
  frames = tf.cast(frames, tf.float32) / 255.0
  return (frames - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)

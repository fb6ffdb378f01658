"""The evaluation views of a clip: per clip of `eval.num_clips`, TSN's centred segment sampling,
short side resized to `dataset.resize_short`, then `eval.num_crops` crops. One code path for the
eval pipeline and for predicting on a user's video."""

from __future__ import annotations

from typing import Callable

import ml_collections
import tensorflow as tf

from aknet_jax.data import augment
from aknet_jax.data import sampling


def stack_views(per_crop: list[list[tf.Tensor]]) -> tf.Tensor:
  """Views crop-major, then clip (TSM's multi-crop layout); no view axis for a single view."""
  views = [v for crop in per_crop for v in crop]
  return views[0] if len(views) == 1 else tf.stack(views)


def eval_views(fetch: Callable[[tf.Tensor], tf.Tensor], num_frames, config: ml_collections.ConfigDict,
               *, finish: Callable[[tf.Tensor], tf.Tensor] = augment.normalize,
               select: Callable[[tf.Tensor], tf.Tensor] | None = None) -> tf.Tensor:
  """([V,] T*L, S, S, C) views of a clip of `num_frames` frames.

  fetch(indices) -> uint8 (N, H, W, C) frames at those indices; `select` maps the sampled indices
  first (e.g. to each segment's centre frame); `finish` runs on each crop (ImageNet normalisation).
  """
  d, e = config.dataset, config.eval
  per_crop = [[] for _ in range(e.num_crops)]
  for clip in range(e.num_clips):
    idx = sampling.eval_indices(num_frames, d.num_segments, d.frames_per_segment, clip, e.num_clips)
    frames = augment.resize_short_side(fetch(select(idx) if select else idx), d.resize_short)
    for c, crop in enumerate(augment.eval_crops(frames, d.image_size, e.num_crops)):
      per_crop[c].append(finish(crop))
  return stack_views(per_crop)

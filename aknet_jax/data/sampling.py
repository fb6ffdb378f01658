"""TSN segment sampling (TSM: 1 frame per segment; TDN: windows of L consecutive frames), as TF ops.

Indices are 0-based frame numbers, segment-major: segment k's window is out[k*L:(k+1)*L]. With
u = n - L + 1 valid window starts and T segments:
- train: segments of integer length u // T from frame 0, one uniform start in each (TSM/TDN
  `_sample_indices`); clips with u < T get T sorted uniform draws from [0, u) (TDN's rule), so short
  videos repeat frames;
- eval: tick = u / T in float64, start_k = int(tick * (c + 0.5) / C + tick * k) for clip c of C
  (C = 1: the segment centres of TSM/TDN `_get_test_indices`; short videos repeat neighbours).
A window p, p+1, ..., p+L-1 stops at the last frame (TDN), and its RGB frame is p + L // 2.
"""

from __future__ import annotations

import tensorflow as tf


def _windows(starts: tf.Tensor, num_frames: tf.Tensor, frames_per_segment: int) -> tf.Tensor:
  """(T,) starts -> (T*L,) frame indices, each window clamped at the last frame."""
  offsets = tf.range(frames_per_segment, dtype=tf.int32)
  idx = tf.minimum(starts[:, None] + offsets[None, :], num_frames - 1)
  return tf.reshape(idx, [-1])


def _num_starts(num_frames, frames_per_segment):
  return tf.maximum(tf.cast(num_frames, tf.int32) - frames_per_segment + 1, 1)


def train_indices(num_frames, num_segments: int, frames_per_segment: int, seed) -> tf.Tensor:
  """Random TSN training indices (T*L,) int32 for a clip of `num_frames` frames.

  `seed`: shape (2,) int32/int64 stateless seed (one per example and epoch).
  """
  num_frames = tf.cast(num_frames, tf.int32)
  u = _num_starts(num_frames, frames_per_segment)
  avg = u // num_segments
  k = tf.range(num_segments, dtype=tf.int32)
  in_segment = tf.random.stateless_uniform(
      [num_segments], seed, minval=0, maxval=tf.maximum(avg, 1), dtype=tf.int32)
  anywhere = tf.sort(tf.random.stateless_uniform(
      [num_segments], seed, minval=0, maxval=u, dtype=tf.int32))
  starts = tf.where(avg > 0, k * avg + in_segment, anywhere)
  return _windows(starts, num_frames, frames_per_segment)


def eval_indices(num_frames, num_segments: int, frames_per_segment: int,
                 clip: int = 0, num_clips: int = 1) -> tf.Tensor:
  """Deterministic indices (T*L,) int32 of clip `clip` of `num_clips` (1 clip: segment centres)."""
  num_frames = tf.cast(num_frames, tf.int32)
  u = _num_starts(num_frames, frames_per_segment)
  tick = tf.cast(u, tf.float64) / num_segments
  k = tf.range(num_segments, dtype=tf.float64)
  starts = tf.cast(tick * ((clip + 0.5) / num_clips) + tick * k, tf.int32)  # Truncation = int().
  return _windows(starts, num_frames, frames_per_segment)

"""Segment sampling and spatial transforms against NumPy / PIL references written here."""

import numpy as np
from PIL import Image
from PIL import ImageFilter
import pytest

tf = pytest.importorskip("tensorflow")

from aknet_jax.data import augment  # noqa: E402
from aknet_jax.data import sampling  # noqa: E402


def ref_eval_starts(n, t, l):
  """TSM/TDN test-time starts (0-based): int(tick / 2 + tick * k), tick = (n - l + 1) / t."""
  tick = max(n - l + 1, 1) / t
  return [int(tick / 2.0 + tick * k) for k in range(t)]


def ref_window(start, n, l):
  return [min(start + j, n - 1) for j in range(l)]


def seeds(count):
  return [tf.constant([7, s], tf.int64) for s in range(count)]


@pytest.mark.parametrize("n,t,l", [(47, 8, 1), (47, 8, 5), (16, 8, 1), (100, 8, 5), (9, 4, 1)])
def test_train_indices_stay_in_their_segment(n, t, l):
  avg = (n - l + 1) // t
  sample = tf.function(lambda seed: sampling.train_indices(n, t, l, seed))
  seen = set()
  for seed in seeds(40):
    idx = sample(seed).numpy().reshape(t, l)
    for k in range(t):
      start = idx[k, 0]
      assert k * avg <= start < (k + 1) * avg  # TSM: segments of length n // T from frame 0.
      assert list(idx[k]) == ref_window(start, n, l)  # L consecutive frames.
      seen.add(start - k * avg)
  assert seen == set(range(avg))  # Every offset within a segment gets drawn.


def test_train_indices_short_clip_repeats_frames():
  for seed in seeds(10):
    idx = sampling.train_indices(5, 8, 1, seed).numpy()
    assert idx.shape == (8,) and idx.min() >= 0 and idx.max() < 5
    assert np.all(np.diff(idx) >= 0)  # Sorted draws: time order kept, frames repeated.
    tdn = sampling.train_indices(6, 8, 5, seed).numpy().reshape(8, 5)
    assert tdn.max() <= 5 and np.all(tdn[:, 1:] >= tdn[:, :-1])


@pytest.mark.parametrize("n,t,l", [(47, 8, 1), (47, 8, 5), (8, 8, 1), (5, 8, 1), (3, 8, 5),
                                   (1000, 16, 5)])
def test_eval_indices_are_segment_centres(n, t, l):
  idx = sampling.eval_indices(n, t, l).numpy()
  expected = sum((ref_window(s, n, l) for s in ref_eval_starts(n, t, l)), [])
  assert list(idx) == expected


def test_eval_indices_reference_values():
  # The reference's Appendix A (1-based there): TSM n=47 centres 3, 9, ..., 45; TDN starts and
  # RGB frames (start + 2).
  assert list(sampling.eval_indices(47, 8, 1).numpy() + 1) == [3, 9, 15, 21, 27, 33, 39, 45]
  tdn = sampling.eval_indices(47, 8, 5).numpy().reshape(8, 5) + 1
  assert list(tdn[:, 0]) == [3, 9, 14, 19, 25, 30, 35, 41]
  assert list(tdn[:, 2]) == [5, 11, 16, 21, 27, 32, 37, 43]


def test_eval_multi_clip_offsets():
  a = sampling.eval_indices(80, 8, 1, clip=0, num_clips=2).numpy()
  b = sampling.eval_indices(80, 8, 1, clip=1, num_clips=2).numpy()
  assert list(a) == [int(10 * 0.25 + 10 * k) for k in range(8)]
  assert list(b) == [int(10 * 0.75 + 10 * k) for k in range(8)]


def ref_crop_sizes(w, h, size, scales):
  base = min(w, h)
  sizes = [int(base * s) for s in scales]
  sizes = [size if abs(s - size) < 3 else s for s in sizes]
  return {(sizes[j], sizes[i]) for i in range(len(sizes)) for j in range(len(sizes))
          if abs(i - j) <= 1}


def test_multiscale_crop_sizes_and_offsets():
  scales = (1.0, 0.875, 0.75, 0.66)
  w, h = 455, 256
  expected = {(256, 256), (224, 256), (256, 224), (224, 224), (192, 224), (224, 192), (192, 192),
              (168, 192), (192, 168), (168, 168)}
  assert ref_crop_sizes(w, h, 224, scales) == expected  # The reference's worked example.
  pairs, offsets = set(), set()
  box = tf.function(lambda seed: augment.multiscale_crop_box(h, w, 224, scales, seed))
  for seed in seeds(300):
    y, x, ch, cw = (int(v) for v in box(seed))
    pairs.add((cw, ch))
    ws, hs = (w - cw) // 4, (h - ch) // 4
    assert (x, y) in {(mx * ws, my * hs) for mx, my in augment.FIXED_OFFSETS}
    assert 0 <= x and x + cw <= w and 0 <= y and y + ch <= h
    if ws and hs:
      offsets.add((x // ws, y // hs))
  assert pairs == expected
  assert offsets == set(augment.FIXED_OFFSETS)


def test_crop_resize_matches_pil_bilinear():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (1, 120, 150, 3)).astype(np.uint8)
  frame = np.asarray(Image.fromarray(frame[0]).filter(ImageFilter.GaussianBlur(2)))[None]
  for box, size in (((10, 20, 100, 110), 64), ((0, 0, 40, 30), 64)):  # Shrink, enlarge.
    y, x, h, w = box
    got = augment.crop_and_resize(tf.constant(frame), box, size).numpy()[0]
    ref = np.asarray(Image.fromarray(frame[0]).crop((x, y, x + w, y + h))
                     .resize((size, size), Image.BILINEAR), np.float32)
    assert np.abs(got - ref)[4:-4, 4:-4].mean() < 1.0  # Interior (PIL rounds to uint8).


def test_eval_resize_and_centre_crop():
  assert [int(v) for v in augment.short_side_size(100, 176, 256)] == [256, int(256 * 176 / 100)]
  assert [int(v) for v in augment.short_side_size(300, 200, 256)] == [int(256 * 300 / 200), 256]
  # torchvision CenterCrop: int(round((W - S) / 2)), half to even.
  assert int(augment.centre_crop_offset(451, 224)) == 114  # 113.5 -> 114
  assert int(augment.centre_crop_offset(449, 224)) == 112  # 112.5 -> 112
  frames = tf.reshape(tf.range(1 * 10 * 17 * 1), [1, 10, 17, 1])
  [crop] = augment.eval_crops(frames, 8, 1)
  np.testing.assert_array_equal(crop.numpy(), frames.numpy()[:, 1:9, 4:12])
  left, right, centre = augment.eval_crops(frames, 8, 3)
  ws, hs = (17 - 8) // 4, (10 - 8) // 4
  np.testing.assert_array_equal(left.numpy(), frames.numpy()[:, 2 * hs:2 * hs + 8, 0:8])
  np.testing.assert_array_equal(right.numpy(),
                                frames.numpy()[:, 2 * hs:2 * hs + 8, 4 * ws:4 * ws + 8])
  np.testing.assert_array_equal(centre.numpy(),
                                frames.numpy()[:, 2 * hs:2 * hs + 8, 2 * ws:2 * ws + 8])


def test_flip_and_normalize():
  frames = np.random.default_rng(1).integers(0, 256, (3, 4, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(augment.flip_if(tf.constant(frames), tf.constant(True)).numpy(),
                                frames[:, :, ::-1])
  np.testing.assert_array_equal(augment.flip_if(tf.constant(frames), tf.constant(False)).numpy(),
                                frames)
  ref = (frames / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(augment.normalize(tf.constant(frames)).numpy(), ref, rtol=1e-5,
                             atol=1e-5)
  draws = [bool(augment.flip_decision(s)) for s in seeds(200)]
  assert 70 < sum(draws) < 130

"""The tf.data input pipeline: sampled-frame decoding, train augmentation, host sharding, batching.

Examples are read by index from the prepared ArrayRecord files, so the order is ours to define:
training is an infinite stream of epochs, each a seeded permutation of the split cut into whole
global batches, of which every host reads its own slice; every random choice of an example (frames,
crop, flip) is seeded by (seed, epoch, example index). Global batch k is therefore the same however
the stream got there and on any number of hosts: resuming is skipping k batches of indices, which
costs nothing. Only the sampled JPEG frames of a clip are decoded. All work runs on the host CPU.

Batches: dicts of NumPy arrays with leading (num_local_devices, per_device_batch) axes:
`frames` float32 (D, b, [V,] T*L, S, S, 3) ImageNet-normalised, segment-major; `label` int32;
`mask` bool (False on eval padding); `index` int64 (position in the split, -1 on padding);
`target_mask` float32 (D, b, [V,] T, S, S) when the dataset has target masks.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from aknet_jax.data import augment
from aknet_jax.data import eval_views
from aknet_jax.data import sampling
from aknet_jax.data import source
from aknet_jax.data.source import class_names, num_examples  # noqa: F401  (the pipeline's facts)

NO_FLIP = ("something_something_v1", "something_something_v2")  # Flip changes their labels.
_ORDER, _EXAMPLE = 1, 2  # Seed streams: example order, per-example randomness.


def _layout(global_batch: int, field: str, process_index, process_count, num_local_devices):
  """(process_index, process_count, num_local_devices, per-host batch, per-device batch)."""
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  d = jax.local_device_count() if num_local_devices is None else num_local_devices
  if global_batch % (n * d):
    raise ValueError(f"config.{field}: {global_batch} is not divisible by the {n * d} devices "
                     f"({n} processes x {d} local devices)")
  return p, n, d, global_batch // n, global_batch // (n * d)


def _shard(num: int, process_index: int, process_count: int) -> tuple[int, int]:
  """This host's contiguous shard [lo, hi) of `num` examples (shards differ by at most one)."""
  return num * process_index // process_count, num * (process_index + 1) // process_count


def _seed(*parts) -> tf.Tensor:
  """A (2,) int64 stateless seed folded from integer parts (Python ints or int64 tensors)."""
  seed = tf.constant([parts[0], 0], tf.int64)
  for p in parts[1:]:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(p, tf.int64))
  return seed


def _fetch_and_parse(ds: source.Split, index: tf.Tensor) -> dict:
  """Reads example `index` and parses it; frames (and masks) stay encoded (one string per frame)."""
  def read(i):
    return np.bytes_(ds.source[int(i)])
  raw = tf.numpy_function(read, [index], tf.string, stateful=False)
  raw.set_shape([])
  spec = {"label": tf.io.FixedLenFeature([], tf.int64),
          "frames": tf.io.VarLenFeature(tf.string)}
  if ds.has_masks:
    spec["masks"] = tf.io.VarLenFeature(tf.string)
  ex = tf.io.parse_single_example(raw, spec)
  for k in ("frames", "masks"):
    if k in ex:
      ex[k] = tf.sparse.to_dense(ex[k])
  return ex


def _decode_jpegs(encoded: tf.Tensor) -> tf.Tensor:
  """(N,) JPEG strings (N static) -> (N, H, W, 3) uint8; unrolled so frames decode in parallel."""
  return tf.stack([tf.io.decode_jpeg(encoded[i], channels=3, dct_method="INTEGER_ACCURATE")
                   for i in range(encoded.shape[0])])


def _decode_masks(encoded: tf.Tensor) -> tf.Tensor:
  """(N,) PNG strings -> (N, H, W, 1) uint8."""
  return tf.stack([tf.io.decode_png(encoded[i], channels=1) for i in range(encoded.shape[0])])


def _centre_frames(indices: tf.Tensor, num_segments: int, frames_per_segment: int) -> tf.Tensor:
  """The RGB (centre) frame of each segment's window: (T*L,) -> (T,)."""
  return tf.reshape(indices, [num_segments, frames_per_segment])[:, frames_per_segment // 2]


def _train_crop(d, shape, seed):
  """The clip's train crop as a function of (N, H, W, C) frames -> (N, S, S, C), one box per clip
  (`dataset.train_augment`): TSM's multi-scale crop, or the paper's 256² resize + random 224²."""
  s = d.image_size
  if d.train_augment == "paper":
    side, box = augment.paper_resize_side(s), augment.paper_crop_box(s, seed)
    return lambda x: augment.resize_and_crop(x, side, box)
  box = augment.multiscale_crop_box(shape[1], shape[2], s, tuple(d.scales), seed)
  return lambda x: augment.crop_and_resize(x, box, s)


def _train_example(ds: source.Split, config, index, epoch) -> dict:
  """Samples, decodes and augments one training clip; randomness from (seed, epoch, index)."""
  d = config.dataset
  t, l = d.num_segments, d.frames_per_segment
  ex = _fetch_and_parse(ds, index)
  seed_sample, seed_crop, seed_flip = tf.unstack(tf.random.experimental.stateless_split(
      _seed(config.train.seed, _EXAMPLE, epoch, index), 3))
  idx = sampling.train_indices(tf.shape(ex["frames"])[0], t, l, seed_sample)
  frames = _decode_jpegs(tf.gather(ex["frames"], idx))
  crop = _train_crop(d, tf.shape(frames), seed_crop)
  flip = augment.flip_decision(seed_flip) if d.flip else tf.constant(False)
  out = {"frames": augment.normalize(augment.flip_if(crop(frames), flip)),
         "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(True), "index": index}
  if ds.has_masks:
    masks = _decode_masks(tf.gather(ex["masks"], _centre_frames(idx, t, l)))
    masks = augment.flip_if(crop(masks), flip) / 255.0
    out["target_mask"] = tf.clip_by_value(masks[..., 0], 0.0, 1.0)
  return out


def _eval_example(ds: source.Split, config, index) -> dict:
  """Every view (clips x crops) of one eval clip; index -1 is padding (example 0, mask False)."""
  d = config.dataset
  ex = _fetch_and_parse(ds, tf.maximum(index, 0))
  n = tf.shape(ex["frames"])[0]
  out = {"frames": eval_views.eval_views(lambda idx: _decode_jpegs(tf.gather(ex["frames"], idx)),
                                         n, config),
         "label": tf.cast(ex["label"], tf.int32), "mask": index >= 0, "index": index}
  if ds.has_masks:
    out["target_mask"] = eval_views.eval_views(
        lambda idx: _decode_masks(tf.gather(ex["masks"], idx)), n, config,
        finish=lambda crop: tf.clip_by_value(crop[..., 0] / 255.0, 0.0, 1.0),
        select=lambda idx: _centre_frames(idx, d.num_segments, d.frames_per_segment))
  return out


def _to_devices(batch: dict, num_devices: int, per_device: int) -> dict:
  """(per_host, ...) -> (num_devices, per_device, ...) for pmap."""
  return {k: tf.reshape(v, tf.concat([[num_devices, per_device], tf.shape(v)[1:]], 0))
          for k, v in batch.items()}


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1  # Parallelism comes from the parallel maps.
  return options


def _check_flip(config):
  """Refuses a flip where it would change the label (TSM never flips Something-Something)."""
  if config.dataset.flip and config.dataset.name in NO_FLIP:
    raise ValueError(f"config.dataset.flip: must be False for {config.dataset.name} (a horizontal "
                     "flip changes left/right labels)")


def create_train_iterator(config: ml_collections.ConfigDict, *, start_batch: int = 0,
                          process_index=None, process_count=None,
                          num_local_devices=None) -> Iterator[dict]:
  """Infinite, deterministic given config.train.seed; batch k of the stream is the same whatever
  start_batch was used to reach it (resume = pass the number of batches already consumed)."""
  _check_flip(config)
  host, hosts, devices, per_host, per_device = _layout(
      config.train.batch_size, "train.batch_size", process_index, process_count,
      num_local_devices)
  data = source.open_split(config, config.dataset.train_split)
  total = len(data.source)
  per_epoch = total // config.train.batch_size  # Whole global batches per epoch (drop_last).
  if per_epoch == 0:
    raise ValueError(f"config.train.batch_size: {config.train.batch_size} is larger than the "
                     f"{total} examples of split {config.dataset.train_split!r}")
  first_epoch, offset = divmod(start_batch, per_epoch)

  def epoch_indices(epoch):
    # One global permutation per epoch; host h takes slice h of every global batch, so the
    # stream of global batches is the same on any number of hosts.
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(total, dtype=tf.int64), _seed(config.train.seed, _ORDER, epoch))
    mine = tf.reshape(perm[:per_epoch * hosts * per_host], [per_epoch, hosts, per_host])[:, host]
    return tf.data.Dataset.from_tensor_slices(
        (tf.reshape(mine, [-1]), tf.fill([per_epoch * per_host], epoch)))

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_indices)
  ds = ds.skip(offset * per_host)  # Only indices are skipped: resuming decodes nothing twice.
  ds = ds.map(lambda i, e: _train_example(data, config, i, e),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(per_host, drop_remainder=True)
  ds = ds.map(lambda b: _to_devices(b, devices, per_device))
  ds = ds.prefetch(config.dataset.prefetch).with_options(_options())
  return ds.as_numpy_iterator()


def create_eval_iterator(config: ml_collections.ConfigDict, *, split=None, process_index=None,
                         process_count=None, num_local_devices=None) -> Iterator[dict]:
  """One pass over the whole split (config.dataset.eval_split by default), deterministic order,
  last batch padded (mask False on padding); every host yields the same number of batches."""
  split = split or config.dataset.eval_split
  host, hosts, devices, per_host, per_device = _layout(
      config.eval.batch_size, "eval.batch_size", process_index, process_count, num_local_devices)
  data = source.open_split(config, split)
  total = len(data.source)
  lo, hi = _shard(total, host, hosts)
  largest_shard = -(-total // hosts)
  num_batches = -(-largest_shard // per_host)  # The same on every host.
  indices = np.full(num_batches * per_host, -1, np.int64)  # -1: padding.
  indices[:hi - lo] = np.arange(lo, hi)
  ds = tf.data.Dataset.from_tensor_slices(indices)
  ds = ds.map(lambda i: _eval_example(data, config, i), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(per_host, drop_remainder=True)
  ds = ds.map(lambda b: _to_devices(b, devices, per_device))
  ds = ds.prefetch(config.dataset.prefetch).with_options(_options())
  return ds.as_numpy_iterator()

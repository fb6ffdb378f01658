"""The tf.data input pipeline: sampled-frame decoding, TSM augmentation, host sharding, batching.

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

import dataclasses
import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aknet_jax.data import augment
from aknet_jax.data import builders
from aknet_jax.data import sampling

GENERATED = ("synthetic_something",)  # Built on first use (generated, nothing to download).
NO_FLIP = ("something_something_v1", "something_something_v2")  # Flip changes their labels.
_ORDER, _EXAMPLE = 1, 2  # Seed streams: example order, per-example randomness.


@dataclasses.dataclass
class _Dataset:
  """A prepared split opened for random access."""
  source: object  # Sequence of serialized tf.train.Example bytes, by position in the split.
  has_masks: bool


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  d = config.dataset
  if d.name not in builders.BUILDERS:
    raise ValueError(f"config.dataset.name: {d.name!r} is not one of {sorted(builders.BUILDERS)}")
  configs = [c.name for c in builders.BUILDERS[d.name].BUILDER_CONFIGS]
  if d.builder_config and d.builder_config not in configs:
    raise ValueError(f"config.dataset.builder_config: {d.builder_config!r} is not one of "
                     f"{configs} for {d.name}")
  builder = tfds.builder(d.name, data_dir=d.data_dir or None, config=d.builder_config or None)
  if not builder.is_prepared():
    if d.name in GENERATED:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    else:
      config_flag = f" --config={d.builder_config}" if d.builder_config else ""
      raise ValueError(
          f"dataset {d.name} is not prepared in {os.fspath(builder.data_dir_root)}: run "
          f"python -m aknet_jax.data.build --dataset={d.name} --manual_dir=DIR "
          f"--data_dir={os.fspath(builder.data_dir_root)}{config_flag}")
  return builder


def _open(config: ml_collections.ConfigDict, split: str) -> _Dataset:
  """Opens `split` for random access, checks it against the config and sets has_masks."""
  builder = _builder(config)
  if split not in builder.info.splits:
    raise ValueError(f"split {split!r} of {config.dataset.name} is not one of "
                     f"{sorted(builder.info.splits)} (config.dataset.train_split/eval_split)")
  try:
    source = builder.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except NotImplementedError:
    raise ValueError(
        f"{config.dataset.name} in {os.fspath(builder.data_dir)} was prepared as "
        f"{builder.info.file_format.value}; the pipeline reads array_record (the builders' "
        "default): rebuild it with python -m aknet_jax.data.build") from None
  features = builder.info.features
  num_classes = features["label"].num_classes
  if config.dataset.num_classes != num_classes:
    raise ValueError(f"config.dataset.num_classes: {config.dataset.num_classes} but "
                     f"{config.dataset.name} has {num_classes} classes")
  has_masks = "masks" in features
  if config.dataset.has_masks != has_masks and not isinstance(config,
                                                              ml_collections.FrozenConfigDict):
    config.dataset.has_masks = has_masks
  return _Dataset(source, has_masks)


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset's class names, from its TFDS `ClassLabel` feature."""
  return list(_builder(config).info.features["label"].names)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples of `split` of the configured dataset (prepares synthetic data if needed)."""
  builder = _builder(config)
  if split not in builder.info.splits:
    raise ValueError(f"split {split!r} of {config.dataset.name} is not one of "
                     f"{sorted(builder.info.splits)}")
  return builder.info.splits[split].num_examples


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


def _fetch_and_parse(ds: _Dataset, index: tf.Tensor) -> dict:
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


def _train_example(ds: _Dataset, config, index, epoch) -> dict:
  """Samples, decodes and augments one training clip; randomness from (seed, epoch, index)."""
  d = config.dataset
  t, l, s = d.num_segments, d.frames_per_segment, d.image_size
  ex = _fetch_and_parse(ds, index)
  seed_sample, seed_crop, seed_flip = tf.unstack(tf.random.experimental.stateless_split(
      _seed(config.train.seed, _EXAMPLE, epoch, index), 3))
  idx = sampling.train_indices(tf.shape(ex["frames"])[0], t, l, seed_sample)
  frames = _decode_jpegs(tf.gather(ex["frames"], idx))
  shape = tf.shape(frames)
  box = augment.multiscale_crop_box(shape[1], shape[2], s, tuple(d.scales), seed_crop)
  flip = augment.flip_decision(seed_flip) if d.flip else tf.constant(False)
  out = {"frames": augment.normalize(
             augment.flip_if(augment.crop_and_resize(frames, box, s), flip)),
         "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(True), "index": index}
  if ds.has_masks:
    masks = _decode_masks(tf.gather(ex["masks"], _centre_frames(idx, t, l)))
    masks = augment.flip_if(augment.crop_and_resize(masks, box, s), flip) / 255.0
    out["target_mask"] = tf.clip_by_value(masks[..., 0], 0.0, 1.0)
  return out


def _eval_example(ds: _Dataset, config, index) -> dict:
  """Every view (clips x crops) of one eval clip; index -1 is padding (example 0, mask False)."""
  d, e = config.dataset, config.eval
  t, l, s = d.num_segments, d.frames_per_segment, d.image_size
  ex = _fetch_and_parse(ds, tf.maximum(index, 0))
  n = tf.shape(ex["frames"])[0]
  views, mask_views = [[] for _ in range(e.num_crops)], [[] for _ in range(e.num_crops)]
  for clip in range(e.num_clips):
    idx = sampling.eval_indices(n, t, l, clip, e.num_clips)
    frames = augment.resize_short_side(_decode_jpegs(tf.gather(ex["frames"], idx)), d.resize_short)
    for c, crop in enumerate(augment.eval_crops(frames, s, e.num_crops)):
      views[c].append(augment.normalize(crop))
    if ds.has_masks:
      masks = augment.resize_short_side(
          _decode_masks(tf.gather(ex["masks"], _centre_frames(idx, t, l))), d.resize_short)
      for c, crop in enumerate(augment.eval_crops(masks, s, e.num_crops)):
        mask_views[c].append(tf.clip_by_value(crop[..., 0] / 255.0, 0.0, 1.0))
  out = {"frames": _stack_views(views), "label": tf.cast(ex["label"], tf.int32),
         "mask": index >= 0, "index": index}
  if ds.has_masks:
    out["target_mask"] = _stack_views(mask_views)
  return out


def _stack_views(per_crop: list[list[tf.Tensor]]) -> tf.Tensor:
  """Views crop-major, then clip (TSM's multi-crop layout); no view axis for a single view."""
  views = [v for crop in per_crop for v in crop]
  return views[0] if len(views) == 1 else tf.stack(views)


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
  data = _open(config, config.dataset.train_split)
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
  data = _open(config, split)
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

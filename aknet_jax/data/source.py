"""The prepared TFDS dataset a config names: built on first use where it is generated, opened
for random access by index (ArrayRecord), and its facts (class names, split sizes)."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import tensorflow_datasets as tfds

from aknet_jax.data import builders

GENERATED = ("synthetic_something",)  # Built on first use (generated, nothing to download).


@dataclasses.dataclass
class Split:
  """A prepared split opened for random access."""
  source: object  # Sequence of serialized tf.train.Example bytes, by position in the split.
  has_masks: bool


def _needs_array_record(name: str, where: str, file_format: str) -> ValueError:
  return ValueError(
      f"{name} in {where} was built with file_format={file_format}; our pipeline needs "
      "array_record (random access): rebuild it with python -m aknet_jax.data.build "
      "--file_format=array_record into another --data_dir, or read it with "
      f"tfds.builder(..., file_format='{file_format}').as_dataset()")


def _open(d: ml_collections.ConfigDict, **kwargs) -> tfds.core.DatasetBuilder:
  return tfds.builder(d.name, data_dir=d.data_dir or None, config=d.builder_config or None,
                      **kwargs)


def builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  d = config.dataset
  if d.name not in builders.BUILDERS:
    raise ValueError(f"config.dataset.name: {d.name!r} is not one of {sorted(builders.BUILDERS)}")
  configs = [c.name for c in builders.BUILDERS[d.name].BUILDER_CONFIGS]
  if d.builder_config and d.builder_config not in configs:
    raise ValueError(f"config.dataset.builder_config: {d.builder_config!r} is not one of "
                     f"{configs} for {d.name}")
  b = _open(d)  # A prepared dataset opens in the format it was built in (video_builder).
  if not b.is_prepared():
    if d.name in GENERATED:
      b.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    else:
      config_flag = f" --config={d.builder_config}" if d.builder_config else ""
      raise ValueError(
          f"dataset {d.name} is not prepared in {os.fspath(b.data_dir_root)}: run "
          f"python -m aknet_jax.data.build --dataset={d.name} --manual_dir=DIR "
          f"--data_dir={os.fspath(b.data_dir_root)}{config_flag}")
  return b


def open_split(config: ml_collections.ConfigDict, split: str) -> Split:
  """Opens `split` for random access, checks it against the config and sets has_masks."""
  b = builder(config)
  if split not in b.info.splits:
    raise ValueError(f"split {split!r} of {config.dataset.name} is not one of "
                     f"{sorted(b.info.splits)} (config.dataset.train_split/eval_split)")
  try:
    source = b.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except NotImplementedError:
    raise _needs_array_record(config.dataset.name, os.fspath(b.data_dir),
                              b.info.file_format.value) from None
  features = b.info.features
  num_classes = features["label"].num_classes
  if config.dataset.num_classes != num_classes:
    raise ValueError(f"config.dataset.num_classes: {config.dataset.num_classes} but "
                     f"{config.dataset.name} has {num_classes} classes")
  has_masks = "masks" in features
  if config.dataset.has_masks != has_masks and not isinstance(config,
                                                              ml_collections.FrozenConfigDict):
    config.dataset.has_masks = has_masks
  return Split(source, has_masks)


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset's class names, from its TFDS `ClassLabel` (known without preparing the data)."""
  d = config.dataset
  return list(_open(d).info.features["label"].names)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples of `split` of the configured dataset (prepares synthetic data if needed)."""
  b = builder(config)
  if split not in b.info.splits:
    raise ValueError(f"split {split!r} of {config.dataset.name} is not one of "
                     f"{sorted(b.info.splits)}")
  return b.info.splits[split].num_examples

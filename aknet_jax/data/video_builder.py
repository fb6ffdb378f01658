"""What the video-dataset builders share: features, config, parallel clip loading, build report.

Each clip is stored as a sequence of JPEG frames (`frames`), its frame count, label and id, so the
input pipeline decodes only the frames it samples. Datasets are written as ArrayRecord files (random
access: the pipeline reads examples in any order, which makes exact resumption cheap). Clips that
cannot be read are skipped, counted and listed in `build_report.json` beside the dataset files.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing
import os
from typing import Callable, Iterable, Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import py_utils

from aknet_jax import cli
from aknet_jax.data import video_io

REPORT_FILE = "build_report.json"
# Below this many clips a split is loaded in-process (worker start-up would cost more).
_MIN_CLIPS_FOR_WORKERS = 200


@dataclasses.dataclass(eq=False)
class VideoConfig(tfds.core.BuilderConfig):
  """short_side: stored frames' short side in px (0 = keep the source's); jpeg_quality: 1-95."""
  short_side: int = 256
  jpeg_quality: int = 90


def clip_features(class_label: tfds.features.ClassLabel, with_masks: bool = False):
  """The feature spec of a stored clip (masks: per-frame binary target masks, PNG)."""
  features = {
      "id": tfds.features.Text(),
      "label": class_label,
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "frames": tfds.features.Sequence(
          tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
  }
  if with_masks:
    features["masks"] = tfds.features.Sequence(
        tfds.features.Image(shape=(None, None, 1), encoding_format="png"))
  return tfds.features.FeaturesDict(features)


class ClipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders: ArrayRecord by default, skipped clips collected into a report.

  `num_workers`: processes decoding clips in parallel (default: all cores for large splits).
  """

  def __init__(self, *, file_format=None, num_workers: int | None = None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.is_prepared():
      # A new build writes ArrayRecord (our pipeline reads by index); a prepared one keeps the
      # format its dataset_info.json records, so plain tfds.builder(...) reads a tfrecord build.
      self.info.set_file_format("array_record", override=True)
    self._num_workers = num_workers
    self._report = {}

  @py_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The builder's source file (TFDS's default needs the undeclared `importlib_resources`)."""
    return epath.Path(inspect.getfile(cls))

  def _split_report(self, split: str) -> dict:
    return self._report.setdefault(split, {"num_examples": 0, "num_skipped": 0, "skipped": []})

  def _skip(self, split: str, clip_id: str, reason: str):
    logging.warning("%s/%s: skipping clip %s: %s", self.name, split, clip_id, reason)
    r = self._split_report(split)
    r["num_skipped"] += 1
    r["skipped"].append({"id": clip_id, "reason": reason})

  def _clips(self, split: str, items: Iterable[tuple[str, int | str, str, str]],
             label_of: Callable[[int | str], int | None]) -> Iterator[tuple[str, dict]]:
    """Yields (key, example) for items (id, raw label, kind 'video'|'folder', path).

    `label_of` maps a raw label to a class index, or None when it is not in the class list.
    """
    cfg = self.builder_config
    seen, jobs, meta = set(), [], []
    self._split_report(split)
    for clip_id, raw_label, kind, path in items:
      label = label_of(raw_label)
      if clip_id in seen:
        self._skip(split, clip_id, "duplicate id in the label file")
      elif label is None:
        self._skip(split, clip_id, f"label {raw_label!r} is not in the class list")
      else:
        seen.add(clip_id)
        jobs.append((kind, path, cfg.short_side, cfg.jpeg_quality))
        meta.append((clip_id, label))
    workers = self._num_workers
    if workers is None:
      workers = (os.cpu_count() or 1) if len(jobs) >= _MIN_CLIPS_FOR_WORKERS else 0
    if workers > 1:
      # Spawned (not forked: TF threads may exist) workers decode with video_io: PyAV, Pillow.
      pool = multiprocessing.get_context("spawn").Pool(workers)
      results = pool.imap(video_io.load_clip, jobs, chunksize=4)
    else:
      pool, results = None, map(video_io.load_clip, jobs)
    try:
      for (clip_id, label), (status, value) in zip(meta, results):
        if status == "skip":
          self._skip(split, clip_id, value)
          continue
        self._split_report(split)["num_examples"] += 1
        yield clip_id, {"id": clip_id, "label": label, "num_frames": len(value), "frames": value}
    finally:
      if pool is not None:
        pool.terminate()

  def _download_and_prepare(self, dl_manager, download_config):
    try:
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    except RuntimeError as e:  # TFDS wraps the writer's OSError (a full disk, a quota).
      if "write" not in str(e):
        raise
      raise OSError(f"writing {self.name} under {os.fspath(self.data_dir_root)} failed "
                    f"({cli.one_line(str(e))}); free space there or choose another data_dir "
                    "and build again") from e
    # self.data_dir is the temporary directory renamed into place when preparation succeeds.
    with open(os.path.join(os.fspath(self.data_dir), REPORT_FILE), "w") as f:
      json.dump(self._report, f, indent=1)
    for split, r in sorted(self._report.items()):
      logging.info("%s/%s: %d clips written, %d skipped", self.name, split, r["num_examples"],
                   r["num_skipped"])


def read_report(builder: tfds.core.DatasetBuilder) -> dict:
  """The build report of a prepared dataset ({} when it has none)."""
  path = os.path.join(os.fspath(builder.data_dir), REPORT_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def manual_dir(dl_manager, name: str, instructions: str):
  """dl_manager.manual_dir, or a one-line ValueError saying what to pass."""
  try:
    return dl_manager.manual_dir
  except AssertionError:
    where = getattr(dl_manager, "_manual_dir", None)
    raise ValueError(
        f"{name}: manual_dir {os.fspath(where) if where else '(not set)'} does not exist or is "
        f"empty; pass --manual_dir=DIR holding {instructions}") from None


def require(path, name: str, what: str, manual: str):
  """Raises a one-line ValueError naming the expected file/folder when `path` is missing."""
  if not os.path.exists(path):
    raise ValueError(f"{name}: expected {what} at {os.fspath(path)} (manual_dir {manual})")
  return path

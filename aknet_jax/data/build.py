r"""Builds a dataset into TFDS format from the files downloaded by hand; never uses the network.

  python -m aknet_jax.data.build --dataset=something_something_v2 \
      --manual_dir=/data/ssv2 --data_dir=~/tensorflow_datasets [--config=short128] \
      [--file_format=array_record|tfrecord]

Clips that cannot be read (undecodable or empty video, missing frame folder, label outside the
class list) are skipped; the build finishes and lists them in <dataset dir>/build_report.json.
Equivalent: `tfds build NAME --imports=aknet_jax.data.builders --manual_dir=DIR --data_dir=DIR`
(TFDS 4.9.10's `tfds` launcher imports apache-beam at start-up: install it to use that form).
Our pipeline reads array_record (random access, the default); tfrecord is for readers that use
`tfds.builder(NAME, data_dir=DIR, config=C, file_format="tfrecord").as_dataset(split=...)`, or,
without our builders, `tfds.builder_from_directory(DIR/NAME/C/VERSION).as_dataset(split=...)`
(TFDS's as_dataset() does not read ArrayRecord).
"""

from __future__ import annotations

import os
import re

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from aknet_jax import cli
from aknet_jax import logs
from aknet_jax.data import builders
from aknet_jax.data import video_builder

_DATASET = flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to build.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the files downloaded by hand.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets).")
_CONFIG = flags.DEFINE_string("config", None, "Builder config (default: the builder's default).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None,
                                    "Decoding processes (default: all cores for large splits).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset is prepared.")
FILE_FORMATS = ("array_record", "tfrecord")
_FILE_FORMAT = flags.DEFINE_enum(
    "file_format", "array_record", list(FILE_FORMATS),
    "array_record: random access, what our pipeline reads; tfrecord: for tfds as_dataset() users.")
_MAX_LISTED = 20


def _prepared_format(error: BaseException) -> str:
  """The file format TFDS names when a builder is opened with another format than the prepared
  data's ("File format is already set to FileFormat.TFRECORD"), else ''."""
  m = re.search(r"File format is already set to FileFormat\.(\w+)", str(error))
  return m.group(1).lower() if m else ""


def build(dataset: str, manual_dir: str | None, data_dir: str | None, config: str | None = None,
          num_workers: int | None = None, overwrite: bool = False,
          file_format: str = "array_record") -> dict:
  """Prepares `dataset` in `data_dir` as `file_format` files; returns its build report."""
  if dataset not in builders.BUILDERS:
    raise ValueError(f"--dataset: {dataset!r} is not one of {sorted(builders.BUILDERS)}")
  configs = [c.name for c in builders.BUILDERS[dataset].BUILDER_CONFIGS]
  if config and config not in configs:
    raise ValueError(f"--config: {config!r} is not one of {configs} for {dataset}")
  if builders.BUILDERS[dataset].MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
    what = " ".join(builders.BUILDERS[dataset].MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    raise ValueError(f"--manual_dir: required for {dataset}. {what}")
  if manual_dir and not os.path.isdir(os.path.expanduser(manual_dir)):
    raise ValueError(f"--manual_dir={manual_dir}: no such directory (the folder holding the files "
                     f"downloaded by hand for {dataset})")
  if file_format not in FILE_FORMATS:
    raise ValueError(f"--file_format: {file_format!r} is not one of {list(FILE_FORMATS)}")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  try:
    builder = tfds.builder(dataset, data_dir=data_dir, config=config or None,
                           num_workers=num_workers, file_format=file_format)
  except ValueError as e:
    prepared = _prepared_format(e)
    if not prepared:
      raise
    raise ValueError(f"{dataset} is already prepared in {data_dir or '~/tensorflow_datasets'} "
                     f"with file_format={prepared}: build --file_format={file_format} into "
                     "another --data_dir") from None
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
      try_download_gcs=False, download_mode=mode))
  return video_builder.read_report(builder) | {"_data_dir": os.fspath(builder.data_dir)}


def _print_report(report: dict):
  path = os.path.join(report.pop("_data_dir"), video_builder.REPORT_FILE)
  for split, r in sorted(report.items()):
    print(f"{split}: {r['num_examples']} clips written, {r['num_skipped']} skipped")
    for s in r["skipped"][:_MAX_LISTED]:
      print(f"  skipped {s['id']}: {s['reason']}")
    if r["num_skipped"] > _MAX_LISTED:
      print(f"  ... {r['num_skipped'] - _MAX_LISTED} more")
  print(f"report: {path}")


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  if not _DATASET.value:
    cli.fail(f"--dataset is required: one of {sorted(builders.BUILDERS)}")
  logs.quiet_libraries()
  report = cli.call(build, _DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _CONFIG.value,
                    _NUM_WORKERS.value, _OVERWRITE.value, _FILE_FORMAT.value)
  _print_report(report)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

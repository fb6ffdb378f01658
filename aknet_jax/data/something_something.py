"""TFDS builders for Something-Something V1 (JPEG frame folders + CSV) and V2 (webm + JSON).

Both use the 174 class names shipped in `classes/ssv2.txt` (alphabetical = the official index
order; V1 has the same names). An SSv2 entry's class is its `template` with '[' and ']' removed,
as TSM's gen_label_sthv2.py does. Test entries (no label) get label -1.
"""

from __future__ import annotations

import csv
import json
import os

from absl import logging
import tensorflow_datasets as tfds

from aknet_jax.data import class_names
from aknet_jax.data import video_builder

_V1_FRAMES = "20bn-something-something-v1"
_V2_VIDEOS = "20bn-something-something-v2"
_V1_FILES = {s: f"something-something-v1-{s}.csv"
             for s in ("labels", "train", "validation", "test")}

_V1_INSTRUCTIONS = f"""\
Download Something-Something V1 by hand (registration required) and put in manual_dir:
  {_V1_FILES['labels']}, {_V1_FILES['train']}, {_V1_FILES['validation']}
  ({_V1_FILES['test']} optional: a `test` split with label -1)
  {_V1_FRAMES}/<video id>/00001.jpg, 00002.jpg, ... (the extracted frame archive)
"""

_V2_INSTRUCTIONS = f"""\
Download Something-Something V2 by hand (registration required) and put in manual_dir:
  labels/labels.json, labels/train.json, labels/validation.json (labels/test.json optional)
  -- or the original names something-something-v2-{{labels,train,validation,test}}.json --
  {_V2_VIDEOS}/<video id>.webm (the extracted video archive)
"""


def strip_brackets(template: str) -> str:
  """'Putting [something] onto [something]' -> 'Putting something onto something'."""
  return template.replace("[", "").replace("]", "")


def _label_lookup():
  index = {name: i for i, name in enumerate(class_names.class_names("ssv2"))}
  return lambda name: -1 if name is None else index.get(name)


def _ssv2_label():
  return tfds.features.ClassLabel(names_file=class_names.names_file("ssv2"))


def _check_class_list(name: str, listed, path: str):
  """Logs class names of the label file that our list lacks (their clips will be skipped)."""
  ours = set(class_names.class_names("ssv2"))
  extra = sorted(set(listed) - ours)
  if extra:
    logging.warning("%s: %d classes of %s are not in the shipped class list, e.g. %r",
                    name, len(extra), path, extra[:3])


class SomethingSomethingV1(video_builder.ClipBuilder):
  """Something-Something V1: 108k clips as JPEG frame folders, 174 classes."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _V1_INSTRUCTIONS
  BUILDER_CONFIGS = [
      video_builder.VideoConfig(name="default", short_side=0,
                                description="Frames as distributed (100 px high), not re-encoded."),
      video_builder.VideoConfig(name="short256", short_side=256,
                                description="Frames re-encoded with a short side of 256 px."),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        features=video_builder.clip_features(_ssv2_label()),
        homepage="https://www.qualcomm.com/developer/software/something-something-v-2-dataset")

  def _split_generators(self, dl_manager):
    root = os.fspath(video_builder.manual_dir(
        dl_manager, self.name, f"the something-something-v1-*.csv files and {_V1_FRAMES}/"))
    frames = os.path.join(root, _V1_FRAMES)
    video_builder.require(frames, self.name, f"the frame folders {_V1_FRAMES}/<id>/", root)
    paths = {}
    for split in ("labels", "train", "validation", "test"):
      path = os.path.join(root, _V1_FILES[split])
      if split != "test":
        video_builder.require(path, self.name, f"the label file {_V1_FILES[split]}", root)
      paths[split] = path
    with open(paths["labels"]) as f:
      _check_class_list(self.name, [l.strip() for l in f if l.strip()], paths["labels"])
    splits = {"train": "train", "validation": "validation"}
    if os.path.exists(paths["test"]):
      splits["test"] = "test"
    return {s: self._generate_examples(s, paths[s], frames) for s in splits}

  def _generate_examples(self, split, list_path, frames_root):
    def items():
      with open(list_path, newline="") as f:
        for row in csv.reader(f, delimiter=";"):
          if not row or not row[0].strip():
            continue
          clip_id = row[0].strip()
          name = row[1].strip() if len(row) > 1 else None
          yield clip_id, name, "folder", os.path.join(frames_root, clip_id)
    yield from self._clips(split, items(), _label_lookup())


def _find_v2_file(root: str, split: str) -> str | None:
  for rel in (os.path.join("labels", f"{split}.json"), f"something-something-v2-{split}.json",
              f"{split}.json"):
    path = os.path.join(root, rel)
    if os.path.exists(path):
      return path
  return None


class SomethingSomethingV2(video_builder.ClipBuilder):
  """Something-Something V2: 220k webm clips, 174 classes."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _V2_INSTRUCTIONS
  BUILDER_CONFIGS = [
      video_builder.VideoConfig(name="default", short_side=256,
                                description="Frames at a short side of 256 px (as TSM extracts)."),
      video_builder.VideoConfig(name="short128", short_side=128,
                                description="Frames at a short side of 128 px (quick runs)."),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        features=video_builder.clip_features(_ssv2_label()),
        homepage="https://www.qualcomm.com/developer/software/something-something-v-2-dataset")

  def _split_generators(self, dl_manager):
    root = os.fspath(
        video_builder.manual_dir(dl_manager, self.name, "labels/*.json and the webm videos"))
    videos = os.path.join(root, _V2_VIDEOS)
    video_builder.require(videos, self.name, f"the video folder {_V2_VIDEOS}/<id>.webm", root)
    paths = {}
    for split in ("labels", "train", "validation", "test"):
      paths[split] = _find_v2_file(root, split)
      if paths[split] is None and split != "test":
        raise ValueError(f"{self.name}: expected the label file labels/{split}.json (or "
                         f"something-something-v2-{split}.json) in manual_dir {root}")
    with open(paths["labels"]) as f:
      _check_class_list(self.name, json.load(f), paths["labels"])
    splits = ["train", "validation"] + (["test"] if paths["test"] else [])
    return {s: self._generate_examples(s, paths[s], videos) for s in splits}

  def _generate_examples(self, split, list_path, videos_root):
    with open(list_path) as f:
      entries = json.load(f)

    def items():
      for e in entries:
        clip_id = str(e["id"])
        name = strip_brackets(e["template"]) if "template" in e else None
        yield clip_id, name, "video", os.path.join(videos_root, f"{clip_id}.webm")
    yield from self._clips(split, items(), _label_lookup())

"""TFDS builder for Diving48 (rgb/*.mp4 + the corrected V2 annotations), 48 classes.

Label i is the JSON `label` field; its name is vocab[i] joined by '+' (`classes/diving48.txt`).
The clips are already trimmed, so the whole mp4 is stored (start/end frames are not used).
"""

from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds

from aknet_jax.data import class_names
from aknet_jax.data import video_builder

_FILES = {"train": "Diving48_V2_train.json", "test": "Diving48_V2_test.json",
          "vocab": "Diving48_vocab.json"}

_INSTRUCTIONS = f"""\
Download Diving48 by hand and put in manual_dir:
  {_FILES['train']}, {_FILES['test']}, {_FILES['vocab']}
  rgb/<vid_name>.mp4 (the extracted Diving48_rgb.tar.gz)
"""


class Diving48(video_builder.ClipBuilder):
  """Diving48 (V2 labels): ~18k mp4 clips of dives, splits `train` and `test`."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
      video_builder.VideoConfig(name="default", short_side=256,
                                description="Frames at a short side of 256 px."),
      video_builder.VideoConfig(name="short128", short_side=128,
                                description="Frames at a short side of 128 px (quick runs)."),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        features=video_builder.clip_features(
            tfds.features.ClassLabel(names_file=class_names.names_file("diving48"))),
        homepage="http://www.svcl.ucsd.edu/projects/resound/dataset.html")

  def _split_generators(self, dl_manager):
    root = os.fspath(video_builder.manual_dir(
        dl_manager, self.name, f"{', '.join(_FILES.values())} and rgb/*.mp4"))
    paths = {k: video_builder.require(os.path.join(root, f), self.name, f"the file {f}", root)
             for k, f in _FILES.items()}
    videos = video_builder.require(os.path.join(root, "rgb"), self.name, "the folder rgb/", root)
    with open(paths["vocab"]) as f:
      vocab = ["+".join(v) for v in json.load(f)]
    if tuple(vocab) != class_names.class_names("diving48"):
      raise ValueError(f"{self.name}: {paths['vocab']} does not hold the 48 Diving48 classes in "
                       "the official order (expected the V2 release's Diving48_vocab.json)")
    return {s: self._generate_examples(s, paths[s], videos) for s in ("train", "test")}

  def _generate_examples(self, split, list_path, videos_root):
    with open(list_path) as f:
      entries = json.load(f)
    num_classes = len(class_names.class_names("diving48"))

    def label_of(raw):
      return raw if isinstance(raw, int) and 0 <= raw < num_classes else None

    items = ((str(e["vid_name"]), e.get("label"), "video",
              os.path.join(videos_root, f"{e['vid_name']}.mp4")) for e in entries)
    yield from self._clips(split, items, label_of)

"""Class-name lists shipped with the package (line i = class index i of the official labels)."""

from __future__ import annotations

import functools
import importlib.resources

_FILES = {"ssv2": "ssv2.txt", "diving48": "diving48.txt"}


@functools.cache
def class_names(which: str) -> tuple[str, ...]:
  """Returns the class names of 'ssv2' (also Something-Something V1) or 'diving48'."""
  if which not in _FILES:
    raise ValueError(f"class list {which!r} is not one of {sorted(_FILES)}")
  text = importlib.resources.files("aknet_jax.data").joinpath("classes", _FILES[which]).read_text()
  return tuple(line.strip() for line in text.splitlines() if line.strip())


def names_file(which: str) -> str:
  """Path of the shipped class-name file (for `tfds.features.ClassLabel(names_file=...)`)."""
  class_names(which)  # Validates `which`.
  return str(importlib.resources.files("aknet_jax.data").joinpath("classes", _FILES[which]))


def for_dataset(dataset: str, num_classes: int) -> tuple[str, ...]:
  """The shipped names of a real dataset's classes; 'class i' where no list of that size exists."""
  which = "ssv2" if dataset.startswith("something_something") else dataset
  names = class_names(which) if which in _FILES else ()
  return names if len(names) == num_classes else tuple(f"class {i}" for i in range(num_classes))

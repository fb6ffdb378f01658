"""Console logs a person can read: our progress lines, not the libraries' INFO chatter."""

from __future__ import annotations

import logging as std_logging

from absl import logging

_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/tensorstore/")


class _DropLibraryInfo(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(p in record.pathname for p in _CHATTY)


def quiet_libraries():
  """Drops INFO records of Orbax, TFDS and friends from the absl handler (warnings still show)."""
  logging.get_absl_handler().addFilter(_DropLibraryInfo())

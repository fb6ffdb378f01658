"""Console logs a person can read: our progress lines, not the libraries' INFO chatter."""

from __future__ import annotations

import logging as std_logging
import sys

from absl import logging

_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/tensorstore/", "/asyncio/")


class _DropLibraryInfo(std_logging.Filter):
  """Drops the libraries' INFO records; keeps their errors to one line (tracebacks at -v 1)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not any(p in record.pathname for p in _CHATTY):
      return True
    if record.levelno >= std_logging.ERROR and logging.get_verbosity() < logging.DEBUG:
      record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


def _drop_closed_loop_errors(hook):
  """After a failed Orbax write, TensorStore's pending writes finish into the event loop Orbax
  already closed and each prints a traceback; the failure itself is reported once, by us."""

  def unraisablehook(args):
    if not (args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed"):
      hook(args)

  return unraisablehook


def quiet_libraries():
  """Drops INFO records of Orbax, TFDS and friends from the absl handler (warnings still show),
  and TFDS's progress bars where stderr is not a terminal (log files of batch jobs)."""
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  if not sys.stderr.isatty():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow to import)
    tfds.disable_progress_bar()
  if logging.get_verbosity() < logging.DEBUG:
    sys.unraisablehook = _drop_closed_loop_errors(sys.unraisablehook)

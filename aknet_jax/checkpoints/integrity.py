"""What makes a checkpoint step trustworthy: checksums, finiteness, and how damage is handled.

Orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it when complete, so a save cut
short leaves only that directory. A complete-looking step that cannot be read back or fails its
checksums is renamed to `<step>.corrupt` (never deleted) and the previous step is used.
"""

from __future__ import annotations

import glob
import os
import zlib

import jax
import numpy as np

COMMIT_FILE = "commit_success.txt"  # Orbax writes it into a step just before the final rename.
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's name for a step still being written.
CORRUPT_SUFFIX = ".corrupt"


class CorruptCheckpointError(ValueError):
  """A checkpoint step that exists but cannot be read back intact."""


class SaveError(OSError):
  """Writing a checkpoint failed; the steps saved before are untouched."""


def tree_checksum(tree) -> int:
  """CRC32 over the leaves (shape, dtype, bytes) in tree order: detects silently damaged data.

  Integers count as int64: a step saved as an int32 array may come back as a Python int.
  """
  crc = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    a = np.asarray(leaf)
    a = np.ascontiguousarray(a.astype(np.int64) if a.dtype.kind in "iub" else a)
    crc = zlib.crc32(f"{a.shape}{a.dtype.str}".encode(), crc)
    crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
  return crc


def verify(tree, meta: dict, item: str, where: str):
  want = meta.get("checksums", {}).get(item)
  if want is not None and tree_checksum(tree) != want:
    raise CorruptCheckpointError(f"checkpoint {where}: the {item} item fails its checksum "
                                 "(data damaged on disk)")


def first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def non_finite(tree) -> str | None:
  """Path of the first floating leaf holding NaN or Inf, else None."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      return jax.tree_util.keystr(path)
  return None


def latest_good(step: int | None, directory: str) -> str:
  """How a numerical-fault message ends: what is left to resume from."""
  if step is None:
    return f"no checkpoint was written yet in {directory}"
  return f"the latest good checkpoint, step {step} in {directory}, is kept"


def partial_steps(directory: str) -> list[str]:
  """Step directories a save left unfinished (killed or failed mid-write)."""
  return sorted(glob.glob(os.path.join(glob.escape(directory), f"*{TMP_MARK}*")))


def move_aside(path: str) -> str:
  """Renames a damaged step so that no manager lists it again; its files are kept."""
  target, n = path + CORRUPT_SUFFIX, 1
  while os.path.exists(target):
    target, n = f"{path}{CORRUPT_SUFFIX}{n}", n + 1
  if jax.process_index() == 0:
    os.rename(path, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"aknet_move_aside_{os.path.basename(path)}")
  return target



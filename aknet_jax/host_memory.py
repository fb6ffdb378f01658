"""Host memory reuse: glibc's malloc keeps what XLA:CPU frees instead of handing it back to the OS.

By default glibc serves XLA:CPU's worker threads from per-thread arenas whose large blocks are
mapped per request and unmapped on free, so every training step faults its buffers in afresh:
~600 k page faults (2.4 GB zeroed by the kernel) per TSM-R50 batch-2 step, ~17 % of its time
(docs/benchmarks.md). One arena, no mmap'd blocks and no trimming keep those pages mapped and
reused; the process's resident memory stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "AKNET_KEEP_HOST_MEMORY"  # '0' leaves glibc's defaults.
_kept = False


def keep_freed_memory() -> bool:
  """Sets glibc malloc to reuse freed memory; True if it did (Linux with glibc, not opted out).

  Takes effect for threads that have not allocated yet: call it before JAX runs anything (the
  CLIs do, in `cli.parse_flags`), since XLA's worker threads pick their arena on first use.
  """
  if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # Not glibc (e.g. musl): nothing to set.
    return False
  global _kept
  # One arena (the brk heap), no block served by mmap, and never trim the heap's top.
  _kept = all(mallopt(p, v) == 1 for p, v in
              ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  return _kept


def describe() -> str:
  """The process's host allocator setting, for benchmark reports."""
  return ("glibc malloc keeping freed memory" if _kept
          else f"the allocator's defaults ({ENV}=0 or not glibc)")

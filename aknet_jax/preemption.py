"""Preemption notices: SIGTERM (or Ctrl-C) asks the loop to checkpoint at a step boundary and exit.

Single process: a handler records the signal and the loop, which asks `reached(step)` after every
step, saves and raises `Preempted`. Several processes: JAX's distributed runtime already turns
SIGTERM into a notice shared by all processes and agrees on one step to stop at
(`multihost_utils.reached_preemption_sync_point`), so every host saves the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # Signals noticed while `notice()` is active (process-wide, like signals).


class Preempted(Exception):
  """Training stopped on a preemption notice after saving a checkpoint of `step`."""

  def __init__(self, stage: str, step: int, directory: str, signum: int = signal.SIGTERM):
    self.stage, self.step, self.directory, self.signum = stage, step, directory, signum
    super().__init__(f"preempted by {signal.Signals(signum).name}: stage {stage} saved its "
                     f"checkpoint at step {step} in {directory}; rerun the same command to resume")

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum)  # What a shell reports for a process ended by the signal.


def _multiprocess() -> bool:
  import jax  # pylint: disable=g-import-not-at-top  (the CLIs import this module before JAX)
  return jax.process_count() > 1


@contextlib.contextmanager
def notice():
  """Within the block, SIGTERM / SIGINT only record a notice for `reached` (the first one only:
  the handler then steps aside, so a second Ctrl-C interrupts at once)."""
  if _multiprocess() or threading.current_thread() is not threading.main_thread():
    yield  # JAX's runtime owns SIGTERM with several processes; Python signals need the main thread.
    return
  previous = {s: signal.getsignal(s) for s in _SIGNALS}

  def handler(signum, frame):
    del frame
    _received.append(signum)
    for s, h in previous.items():
      signal.signal(s, h)

  del _received[:]
  for s in _SIGNALS:
    signal.signal(s, handler)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    del _received[:]


def reached(step: int) -> bool:
  """True when training should checkpoint `step` and stop; call it once after every step."""
  if _multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.reached_preemption_sync_point(step)
  return bool(_received)


def requested() -> bool:
  """Whether a notice arrived, without a step to agree on (single process only)."""
  return bool(_received)


def signal_received() -> int:
  """The signal behind the notice (SIGTERM where the runtime took it)."""
  return _received[0] if _received else int(signal.SIGTERM)

"""Helpers of the fault suite: real training processes, signals, and what they leave on disk.

Every run is `python -m aknet_jax.main` on `configs/synthetic.py:tiny` (stage 1, 8 steps, a
checkpoint every 2 keeping 3, a log line every step). The processes share a persistent XLA
compilation cache, so only the first one compiles: the rest cost start-up and a few steps.
"""

from __future__ import annotations

import fcntl
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time

import jax
import numpy as np

from aknet_jax import checkpoints
from conftest import FAST_COMPILE_FLAG, ROOT

NUM_STEPS = 8
CONFIG = f"configs/synthetic.py:tiny,stage=1,steps={NUM_STEPS}"
FLAGS = ("--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=2",
         "--config.train.keep_checkpoints=3")
TIMEOUT = 300  # Seconds per process; generous for a loaded 2-core CI machine.
STEP_LINE = re.compile(r"stage 1 step (\d+)/\d+")


def file_size_limit(limit: int, *, die: bool, module: str = "aknet_jax.main") -> tuple[str, ...]:
  """`python` arguments running the real CLI `module` under RLIMIT_FSIZE = `limit` bytes.

  CPython ignores SIGXFSZ, so a write past the limit fails with EFBIG (as on a full disk);
  `die` restores the default action, and the kernel then kills the process in that write.
  """
  code = (f"import resource, runpy, signal; "
          f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
          + ("signal.signal(signal.SIGXFSZ, signal.SIG_DFL); " if die else "")
          + f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
  return ("-c", code)


def shared_dir(tmp_path_factory, name: str) -> str:
  """A directory shared by the pytest-xdist workers of this session (or this process's own)."""
  run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  base = tmp_path_factory.getbasetemp()
  path = base.parent / f"{name}-{run}" if run else base / name
  path.mkdir(parents=True, exist_ok=True)
  return str(path)


def environment(cache_dir: str) -> dict:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONUNBUFFERED="1")
  # One CPU device, like the reference run: no device-count flag; only the suite's compile speed.
  env["XLA_FLAGS"] = FAST_COMPILE_FLAG
  return env


def without_cache_writes(env: dict) -> dict:
  """Reads the shared compilation cache but writes no entry (for runs under a file-size limit)."""
  return dict(env, JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=str(10**15))


def command(workdir: str, data_dir: str, *extra: str, config: str = CONFIG,
            python: tuple[str, ...] = ("-m", "aknet_jax.main")) -> list[str]:
  return [sys.executable, *python, f"--config={config},data_dir={data_dir}", *FLAGS,
          f"--workdir={workdir}", *extra]


def run(cmd: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                        **kw)


class Training:
  """A training process whose stderr is read line by line while it runs."""

  def __init__(self, cmd: list[str], env: dict, **kw):
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, **kw)
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)
      self._queue.put(line)
    self._queue.put(None)

  def wait_for_step(self, step: int, timeout: float = TIMEOUT) -> int:
    """Blocks until the process logs a training step >= `step`; returns the step it logged."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self._queue.get(timeout=1.0)
      except queue.Empty:
        continue
      if line is None:
        raise AssertionError(f"process ended (rc {self.proc.wait()}) before step {step}:\n"
                             + self.text[-4000:])
      m = STEP_LINE.search(line)
      if m and int(m.group(1)) >= step:
        return int(m.group(1))
    raise AssertionError(f"no step {step} within {timeout}s:\n" + self.text[-4000:])

  def signal(self, signum: int):
    self.proc.send_signal(signum)

  def finish(self, timeout: float = TIMEOUT) -> int:
    rc = self.proc.wait(timeout=timeout)
    self._reader.join(timeout=30)
    return rc

  @property
  def text(self) -> str:
    return "".join(self.lines)


def step_dir(workdir: str) -> str:
  return os.path.join(workdir, "stage1", "checkpoints")


def steps(workdir: str) -> list[int]:
  """The complete (finalized) checkpoint steps of stage 1."""
  d = step_dir(workdir)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def variables_at(workdir: str, step: int) -> dict:
  variables, _ = checkpoints.read_variables(step_dir(workdir), step)
  return variables


def assert_identical(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def error_line(out: str) -> str:
  """The one `error:` line of a failed command (and no traceback)."""
  assert "Traceback" not in out, out[-4000:]
  lines = [l for l in out.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, out[-4000:]
  return lines[0]


def copy_run(src: str, dst: str, keep_steps: tuple[int, ...]) -> str:
  """A copy of a finished run as if it had been killed after saving `max(keep_steps)`."""
  shutil.copytree(src, dst)
  for s in steps(dst):
    if s not in keep_steps:
      shutil.rmtree(os.path.join(step_dir(dst), str(s)))
  for extra in ("results.json", os.path.join("stage1", "best")):
    path = os.path.join(dst, extra)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  return dst


_REFERENCE: dict = {}


def reference(tmp_path_factory, data_dir: str) -> dict:
  """The uninterrupted run every fault is compared with: built once per session (file-locked
  across xdist workers), with the compilation cache the faulty runs then reuse."""
  if _REFERENCE:
    return _REFERENCE
  root = shared_dir(tmp_path_factory, "faults")
  workdir, cache = os.path.join(root, "reference"), os.path.join(root, "xla_cache")
  with open(os.path.join(root, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(workdir, "results.json")):
      shutil.rmtree(workdir, ignore_errors=True)
      out = run(command(workdir, data_dir), environment(cache))
      assert out.returncode == 0, out.stderr[-4000:]
  _REFERENCE.update(workdir=workdir, env=environment(cache), steps=steps(workdir),
                    final=variables_at(workdir, NUM_STEPS))
  return _REFERENCE


def corrupt_data_file(step_path: str, item: str = "variables", how: str = "truncate") -> str:
  """Damages the largest array data file of an item of a step, in place; returns its path."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_path, item)) for f in fs
           if os.path.basename(d) == "d"]
  target = max(files, key=os.path.getsize)
  size = os.path.getsize(target)
  if how == "truncate":
    os.truncate(target, size // 2)
  else:  # Flip the bytes of a span in the middle, same size.
    with open(target, "r+b") as f:
      f.seek(size // 2)
      chunk = f.read(64)
      f.seek(size // 2)
      f.write(bytes(b ^ 0xFF for b in chunk))
  return target


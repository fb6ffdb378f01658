"""What every command line does with bad input: one `error: ...` line on stderr, a non-zero exit.

`app.run(main, flags_parser=cli.parse_flags)` reports flag and config-file errors (a missing
config file, an unknown field, a field `config.validate` rejects, a stray argument) that way, and
`cli.call(work, ...)` reports user errors and faults (ValueError, OSError, FloatingPointError,
TensorFlow's data errors) and preemption. `--verbosity=1` also logs the traceback.
`parse_flags` runs before any command's work, so it also sets the host allocator
(`host_memory.keep_freed_memory`), which must precede JAX's first computation.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, TypeVar

from absl import flags, logging

from aknet_jax import config as config_lib
from aknet_jax import host_memory
from aknet_jax import preemption

USER_ERROR = 2  # Exit status for bad input and for faults reported in one line.
# Default of the commands' --compilation_cache_dir ('' = off); $AKNET_COMPILATION_CACHE sets it.
COMPILATION_CACHE = os.environ.get("AKNET_COMPILATION_CACHE", "~/.cache/aknet_jax/xla")
T = TypeVar("T")
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def one_line(message: str) -> str:
  """Collapses a message onto one line (tracebacks embedded in it keep only their last error)."""
  lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):
    errors = [m.group(2) for m in map(_EXCEPTION_LINE.match, lines) if m]
    if errors:
      return errors[-1]
  return " ".join(lines)


def _report(line: str):
  """Prints `line` on stderr from column 0 of a clean line (a progress bar may hold the cursor)."""
  fresh = "\r\x1b[K" if sys.stderr.isatty() else ""
  print(fresh + line, file=sys.stderr, flush=True)


def fail(message: str, code: int = USER_ERROR) -> NoReturn:
  _report(f"error: {' '.join(str(message).split())}")
  sys.exit(code)


def _config_error(e: BaseException, argv: list[str]) -> str:
  text = str(e)
  if "Failed loading config file" in text:
    cause = [l.strip() for l in text.splitlines() if l.strip().startswith("[Errno")]
    detail = re.sub(r"^\[Errno \d+\]\s*", "", cause[-1]) if cause else one_line(text)
    return f"--config: cannot load the config file: {detail}"
  if isinstance(e, (AttributeError, KeyError)):  # An override of a field the config lacks.
    key = text.strip("'\" ")
    arg = next((a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]
                and key in a.split("=")[0].split(".")), None)
    return (f"{arg or 'a --config.FIELD override'}: the config has no field {key!r} "
            "(see aknet_jax/config.py:base_config for the fields)")
  return one_line(text)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, config-file loading and config validation, with one-line errors.

  Our command lines take flags only: a positional argument is an error too.
  """
  host_memory.keep_freed_memory()
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (config files raise anything)
    fail(one_line(_config_error(e, argv)))
  if len(rest) > 1:
    fail(f"unexpected arguments: {' '.join(rest[1:])} (flags take the form --name=value)")
  for name in list(flags.FLAGS):
    try:  # A config file that failed to load raises OSError on any attribute access.
      value = flags.FLAGS[name].value
      is_config = hasattr(value, "keys") and "model" in value
    except OSError as e:
      fail(one_line(_config_error(e, argv)))
    if is_config:
      try:
        config_lib.validate(value)
      except ValueError as e:
        fail(one_line(str(e)))
      except (AttributeError, KeyError) as e:
        field = str(e).strip("'\" ")
        fail(f"--{name}: the config lacks field '{field}'; build config files on "
             "aknet_jax.config.base_config() (see configs/synthetic.py)")
  return rest


def _is_data_error(e: BaseException) -> bool:
  tf = sys.modules.get("tensorflow")
  return bool(tf is not None and isinstance(e, tf.errors.OpError))


def call(fn: Callable[..., T], *args, **kwargs) -> T:
  """fn(*args, **kwargs), turning user errors, faults and preemption into one stderr line and an
  exit status (a bug keeps its traceback, exit status 1).

  The exit happens after the exception is dropped and collected: a run that fails mid-training
  still holds a tf.data iterator whose threads run Python; torn down during interpreter shutdown
  instead, it deadlocks.
  """
  try:
    return fn(*args, **kwargs)
  except preemption.Preempted as e:
    code, line = e.exit_code, f"stopped: {e}"
  except (ValueError, OSError, FloatingPointError) as e:
    logging.debug("traceback of the error below", exc_info=True)
    code, line = USER_ERROR, f"error: {' '.join(one_line(str(e)).split())}"
  except Exception as e:  # pylint: disable=broad-except
    if _is_data_error(e):
      logging.debug("traceback of the error below", exc_info=True)
      code, line = USER_ERROR, (
          f"error: reading the dataset failed ({type(e).__name__}: {one_line(e.message)}); "
          "check config.dataset.data_dir, or rebuild the dataset with "
          "python -m aknet_jax.data.build")
    else:
      code, line = 1, "".join(traceback.format_exception(e)).rstrip()
  gc.collect()
  _report(line)
  sys.exit(code)


def use_compilation_cache(directory: str):
  """Turns on JAX's persistent cache for every compile of a second or more, so that a rerun, a
  resume or another seed reuses compiled steps ('' = off; $JAX_COMPILATION_CACHE_DIR wins)."""
  import jax  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not directory:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

"""host_memory: with glibc malloc set to keep freed memory, repeated XLA:CPU calls stop faulting
their buffers in afresh (~17 % of a TSM-R50 training step on this machine, docs/benchmarks.md)."""

import os
import subprocess
import sys

import pytest

# Page faults of 20 training-like steps (state donated, as the training step does; 16 MB
# temporaries), after 20 warm-up steps, each step waited for. With kept memory a late heap growth
# can still fault a temporary or two in once (40960 faults in one run of 5 steps), so the steps are
# many enough that the default allocator's per-step faults outnumber it several times.
_SCRIPT = """
import resource
from aknet_jax import host_memory
print(host_memory.keep_freed_memory())
import jax, jax.numpy as jnp
x = jnp.ones((2048, 2048))
w = jnp.ones((2048, 2048)) * 1e-3
loss = lambda w: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w))
step = jax.jit(lambda w: w - 1e-3 * jax.grad(loss)(w), donate_argnums=0)
for _ in range(20):
  w = jax.block_until_ready(step(w))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  w = jax.block_until_ready(step(w))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(keep: str) -> tuple[str, int]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, AKNET_KEEP_HOST_MEMORY=keep,
             PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_kept_memory_stops_page_faults_and_can_be_turned_off():
  kept, kept_faults = _run("1")
  default, default_faults = _run("0")
  assert (kept, default) == ("True", "False")
  pages = 20 * 2048 * 2048 * 4 // 4096  # One 16 MB temporary per step, 4 KiB pages.
  assert default_faults > pages  # glibc's default maps the temporaries afresh each step...
  assert kept_faults < default_faults // 4  # ...kept memory is reused (0 in most runs).


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_cli_flag_parsing_sets_it():
  """Every command parses its flags with cli.parse_flags before any work; that sets the allocator
  (in a fresh process, as a command starts), and the opt-out leaves glibc's defaults."""
  script = ("from aknet_jax import cli, host_memory\n"
            "cli.parse_flags(['command'])\n"
            "print(host_memory.describe())")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = {}
  for keep in ("1", "0"):
    env = dict(os.environ, AKNET_KEEP_HOST_MEMORY=keep,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out[keep] = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                               text=True, check=True).stdout.strip()
  assert out == {"1": "glibc malloc keeping freed memory",
                 "0": "the allocator's defaults (AKNET_KEEP_HOST_MEMORY=0 or not glibc)"}

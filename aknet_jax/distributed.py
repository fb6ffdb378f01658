"""JAX's distributed runtime: auto-detected on TPU pods and SLURM, explicit flags otherwise.

Also the one cross-host check the loop needs: Orbax writes a checkpoint's host arrays from
process 0 only, so every process must hold the same values when it saves.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips on Cloud TPU VMs are PCI devices of this vendor.


def _on_tpu_vm() -> bool:
  """A Google PCI device and libtpu: JAX's own test (gVNIC NICs share the vendor, not libtpu)."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def cluster_detected() -> str | None:
  """'slurm' or 'tpu' when this process is one of several that JAX can discover by itself."""
  if (os.environ.get("SLURM_STEP_NODELIST") and os.environ.get("SLURM_PROCID") is not None
      and int(os.environ.get("SLURM_NTASKS", "1")) > 1):
    return "slurm"  # Inside `srun`: JAX reads the coordinator, count and rank from SLURM.
  if (os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
      or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS") or _on_tpu_vm()):
    return "tpu"  # JAX reads the slice's workers from the TPU VM's metadata.
  return None


def _check_explicit(coordinator_address, num_processes, process_id):
  missing = [n for n, v in (("--coordinator_address", coordinator_address),
                            ("--num_processes", num_processes), ("--process_id", process_id))
             if v is None]
  if missing:
    raise ValueError(f"a multi-process run needs {', '.join(missing)} as well "
                     "(or none of them on TPU pods and SLURM, which are auto-detected)")
  if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator_address):
    raise ValueError(f"--coordinator_address={coordinator_address!r} is not HOST:PORT "
                     "(e.g. 127.0.0.1:12345, the address of process 0)")
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, {num_processes - 1}] "
                     f"for --num_processes={num_processes}")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None):
  """Calls `jax.distributed.initialize` when the run spans several processes; no-op otherwise.

  Must run before anything touches a JAX device. Cross-process collectives on CPU use gloo
  (the default of recent JAX; set here for older ones) unless JAX_CPU_COLLECTIVES_IMPLEMENTATION
  says otherwise.
  """
  explicit = (coordinator_address is not None or process_id is not None
              or (num_processes or 1) > 1)
  if explicit:
    _check_explicit(coordinator_address, num_processes, process_id)
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    cluster = cluster_detected()
    if cluster:
      logging.info("Multi-process run detected (%s): JAX finds the coordinator itself", cluster)
      jax.distributed.initialize()


def describe():
  return jax.process_index(), jax.process_count(), jax.local_devices()


def tree_digest(tree) -> str:
  """sha256 of the leaves' bytes in tree order: equal digests mean bit-identical values."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def check_processes_agree(tree, what: str):
  """Raises RuntimeError unless every process holds bit-identical `tree` (multi-process only)."""
  if jax.process_count() == 1:
    return
  digest = tree_digest(tree)
  logging.info("%s: sha256 %s on process %d", what, digest, jax.process_index())
  mine = np.frombuffer(bytes.fromhex(digest), np.uint8)
  every = np.asarray(multihost_utils.process_allgather(mine))
  differ = [p for p in range(every.shape[0]) if not np.array_equal(every[p], every[0])]
  if differ:
    raise RuntimeError(f"{what}: processes {differ} hold other values than process 0; the "
                       "replicas diverged (same config, code and JAX version on every host?)")

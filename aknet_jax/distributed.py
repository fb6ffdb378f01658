"""JAX's distributed runtime: auto-detected on TPU pods and SLURM, explicit flags otherwise."""

from __future__ import annotations

import os

import jax


def _cluster_detected() -> bool:
  return bool(os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1
              or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
              or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None):
  """Calls `jax.distributed.initialize` when the run spans several processes; no-op otherwise."""
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if explicit:
    missing = [n for n, v in (("--coordinator_address", coordinator_address),
                              ("--num_processes", num_processes), ("--process_id", process_id))
               if v is None]
    if missing:
      raise ValueError(f"a multi-process run needs {', '.join(missing)} as well "
                       "(or none of them on TPU pods and SLURM, which are auto-detected)")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _cluster_detected():
    jax.distributed.initialize()


def describe():
  return jax.process_index(), jax.process_count(), jax.local_devices()

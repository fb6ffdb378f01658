"""Timing primitives for benchmarks: interleaved rounds, latency statistics, random inputs and
weights of the right shapes, and the device in words."""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Callable

import flax
import jax
import numpy as np

# Dense bf16 peaks (TFLOP/s) of accelerators, for the training step's MFU (matched on device_kind).
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
                    "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}


def device_name() -> str:
  """The first local device in words: the CPU model and core count on CPU hosts."""
  dev = jax.local_devices()[0]
  if dev.platform != "cpu":
    return f"{dev.device_kind} ({dev.platform}, {jax.local_device_count()} local)"
  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"cpu: {model}, {cores} cores"


def random_variables(shapes, seed: int = 0) -> dict:
  """Variables with the structure of `shapes` (ShapeDtypeStructs), drawn for timing only.

  Kernels He-normal over their fan-in, BN scales and variances 1, everything else 0.
  """
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      fan_in = max(1, math.prod(s.shape[:-1]))
      return rng.standard_normal(s.shape, np.float32) * np.float32(math.sqrt(2.0 / fan_in))
    if name in ("scale", "var"):
      return np.ones(s.shape, np.float32)
    return np.zeros(s.shape, np.float32)

  host = jax.tree_util.tree_map_with_path(draw, flax.core.unfreeze(shapes))
  return jax.device_put(host)


def latency_stats(seconds: list[float]) -> dict:
  """{'median', 'min', 'max'} in milliseconds."""
  ms = [1e3 * s for s in seconds]
  return {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}


# Untimed training rounds before timing steps. A CPU process's first steps fault its buffers in
# (TDN-R50 beside torch, keeping freed memory: 0.9 M, 0.7 M, 0.1 M minor faults, then none) and
# ran up to 1.47x the steady step that every later step of a run takes.
TRAIN_WARMUP = 3


def time_interleaved(calls: dict[str, Callable[[], object]], reps: int,
                     warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each zero-argument function, in `reps` rounds that run each once.

  Every call is synchronised (`jax.block_until_ready`); `warmup` untimed rounds come first.
  """
  for _ in range(warmup):
    for fn in calls.values():
      jax.block_until_ready(fn())
  times = {name: [] for name in calls}
  for _ in range(reps):
    for name, fn in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def peak_tflops() -> float | None:
  """The bf16 dense peak of the first device, when BF16_PEAK_TFLOPS knows it."""
  kind = jax.local_devices()[0].device_kind
  return next((v for k, v in BF16_PEAK_TFLOPS.items() if k.lower() in kind.lower()), None)


def across_processes(per_process: list[dict]) -> dict:
  """{key: [each process's value]} of fresh processes' {key: value} rows, which must time the
  same things in the same order: on CPU a process's state moves a ratio by up to 0.1, more than
  its rounds' spread does (docs/benchmarks.md, "ninth session"), so ratios are medians of these."""
  keys = list(per_process[0])
  if any(list(p) != keys for p in per_process):
    raise ValueError("the processes' reports time different things; run them with the same flags")
  return {k: [p[k] for p in per_process] for k in keys}

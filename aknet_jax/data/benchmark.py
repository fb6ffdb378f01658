r"""Input-pipeline throughput: clips/s (and per core) of create_train/eval_iterator, no model.

  python -m aknet_jax.data.benchmark --config=configs/synthetic.py --batch_size=16 --mode=train

Runs the pipeline exactly as training consumes it (one host, one device: the whole batch per
step), skips `--warmup` batches, then times `--num_batches` batches.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from aknet_jax import cli
from aknet_jax import logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Which iterator to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Clips per batch (overrides the config).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 60, "Batches timed.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Batches skipped before timing.")
_CORES = flags.DEFINE_integer("cores", 0, "Pin the process to this many cores (0 = all).")


def measure(config, mode: str = "train", num_batches: int = 60, warmup: int = 5) -> dict:
  """Times the iterator; returns clips/s, clips/s per core, ms per batch and the batch shape."""
  from aknet_jax.data import pipeline  # TF import after flag parsing.
  if mode == "train":
    batch_size = config.train.batch_size
    it = pipeline.create_train_iterator(config, process_index=0, process_count=1,
                                        num_local_devices=1)
  else:
    batch_size = config.eval.batch_size
    it = pipeline.create_eval_iterator(config, process_index=0, process_count=1,
                                       num_local_devices=1)
  batch = None
  for _ in range(warmup):
    batch = next(it)
  start, n = time.perf_counter(), 0
  for batch in it:
    n += 1
    if n == num_batches:
      break
  seconds = time.perf_counter() - start
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  clips_per_s = n * batch_size / seconds
  return {"clips_per_s": clips_per_s, "clips_per_s_per_core": clips_per_s / cores,
          "cores": cores, "ms_per_batch": 1e3 * seconds / max(n, 1), "batches": n,
          "frames_shape": tuple(batch["frames"].shape)}


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  config = _CONFIG.value
  if config is None:
    cli.fail("--config is required, e.g. --config=configs/synthetic.py")
  for name in ("batch_size", "num_batches"):
    if flags.FLAGS[name].value < 1:
      cli.fail(f"--{name}={flags.FLAGS[name].value} must be >= 1")
  if _CORES.value < 0:
    cli.fail(f"--cores={_CORES.value} must be >= 0 (0 = all cores)")
  if _CORES.value:  # Before TensorFlow starts: tf.data sizes its thread pool from the affinity.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_CORES.value])
  if _MODE.value == "train":
    config.train.batch_size = _BATCH_SIZE.value
  else:
    config.eval.batch_size = _BATCH_SIZE.value
  logs.quiet_libraries()
  r = cli.call(measure, config, _MODE.value, _NUM_BATCHES.value, _WARMUP.value)
  d = config.dataset
  print(f"{d.name}/{d.builder_config or 'default'} {_MODE.value} batch {_BATCH_SIZE.value}, "
        f"T={d.num_segments} L={d.frames_per_segment} S={d.image_size}: frames {r['frames_shape']}")
  print(f"{r['clips_per_s']:.1f} clips/s, {r['clips_per_s_per_core']:.1f} clips/s per core "
        f"({r['cores']} cores), {r['ms_per_batch']:.1f} ms/batch over {r['batches']} batches")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

"""Entry point: `python -m aknet_jax.main --config=configs/synthetic.py --workdir=DIR [--mode=...]`.

Parses flags, starts the distributed runtime when launched multi-process, and dispatches. Bad
input and faults end in one `error: ...` line and exit status 2; a preemption notice (SIGTERM,
Ctrl-C) in a checkpoint and 128 + the signal number (docs/reliability.md).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from aknet_jax import cli

flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results.json.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                  "train: the configured stage(s), resuming from the workdir; eval: a checkpoint; "
                  "predict: classify --video with the workdir's checkpoint.")
flags.DEFINE_string("video", None, "--mode=predict: the video to classify (a file, or any "
                    "URL / stream PyAV opens).")
flags.DEFINE_float("window_seconds", None, "--mode=predict: classify each window of this many "
                   "seconds (windows.csv, timeline.png) instead of the whole video.")
flags.DEFINE_float("stride_seconds", None, "--mode=predict with --window_seconds: seconds "
                   "between window starts (default: the window length).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_string("compilation_cache_dir",
                    cli.COMPILATION_CACHE,
                    "Persistent XLA compilation cache: a rerun, a resume or an eval reuses the "
                    "compiled steps instead of compiling them again ('' = off; "
                    "$JAX_COMPILATION_CACHE_DIR, where set, wins).")
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Experiment config file[:string].",
                                lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  if not FLAGS.workdir:
    cli.fail("--workdir is required (where checkpoints and results.json go)")
  if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    cli.fail(f"--workdir={FLAGS.workdir} is a file, not a directory")
  data_dir = os.path.expanduser(FLAGS.config.dataset.data_dir)
  if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    cli.fail(f"config.dataset.data_dir: {data_dir} is a file, not a directory")
  if FLAGS.verbosity < 1 and int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0) < 2:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TF's C++ log repeats data errors as tracebacks.
  cli.call(_run)


def _run():
  # Imported here so that --help and flag errors stay fast.
  from aknet_jax import distributed, logs  # pylint: disable=g-import-not-at-top
  from aknet_jax.train import stages  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  cli.use_compilation_cache(FLAGS.compilation_cache_dir)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info("JAX process %d/%d, local devices: %s", *distributed.describe())
  if FLAGS.mode == "train":
    stages.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "predict":
    from aknet_jax import predict  # pylint: disable=g-import-not-at-top
    predict.predict(FLAGS.config, FLAGS.workdir, FLAGS.video,
                    window_seconds=FLAGS.window_seconds, stride_seconds=FLAGS.stride_seconds)
  else:
    stages.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

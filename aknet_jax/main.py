"""Entry point: `python -m aknet_jax.main --config=configs/synthetic.py --workdir=DIR [--mode=...]`.

Parses flags, starts the distributed runtime when launched multi-process, and dispatches.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results.json.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: the configured stage(s), resuming from the workdir; eval: a checkpoint.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Experiment config file[:string].",
                                lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required (where checkpoints and results.json go)")
  # Imported here so that --help and flag errors stay fast.
  from aknet_jax import distributed, train  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.info("JAX process %d/%d, local devices: %s", *distributed.describe())
    if FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)

"""Draws the figures of a run's files (`aknet_jax.figures`).

  python -m aknet_jax.plots --per_class=RUN/stage2/per_class_accuracy.json \
      [--baseline=RUN/stage1/per_class_accuracy.json] --out=FIG.png
  python -m aknet_jax.plots --sweep=DIR/sweep/sweep.csv --out=FIG.png
"""

from __future__ import annotations

from absl import app, flags

from aknet_jax import cli, figures
from aknet_jax.data import class_names

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: modules import each other)."""
  flags.DEFINE_string("per_class", None, "A per_class_accuracy.json: draw its bar chart.")
  flags.DEFINE_string("baseline", None,
                      "With --per_class: a second per_class_accuracy.json to compare.")
  flags.DEFINE_string("dataset", "", "Dataset whose shipped class list names the bars, for files without names "
                      "(something_something_v1/v2, diving48).")
  flags.DEFINE_integer("max_classes", 40, "Most classes shown in the bar chart.")
  flags.DEFINE_string("sweep", None, "A sweep CSV (python -m aknet_jax.sweep): draw the trade-off.")
  flags.DEFINE_string("out", None, "Output PNG.")


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  if not FLAGS.out or bool(FLAGS.per_class) == bool(FLAGS.sweep):
    cli.fail("give --out=FILE.png and exactly one of --per_class=JSON or --sweep=CSV")
  cli.call(_draw)
  print(FLAGS.out)


def _draw():
  if FLAGS.sweep:
    figures.tradeoff_figure(figures.read_sweep(FLAGS.sweep), FLAGS.out)
    return
  acc = figures.read_per_class(FLAGS.per_class)
  base = figures.read_per_class(FLAGS.baseline) if FLAGS.baseline else None
  names = figures.read_class_names(FLAGS.per_class)
  if names is None and FLAGS.dataset:  # A file written before evaluation recorded names.
    names = list(class_names.for_dataset(FLAGS.dataset, len(acc)))
  figures.per_class_figure(acc, FLAGS.out, baseline=base, class_names=names,
                   max_classes=FLAGS.max_classes)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)

"""The accuracy-cost trade-off over AK-Net's split x alpha x transform mode (Fig. 5, Table VI).

  python -m aknet_jax.sweep --config=configs/synthetic.py --workdir=DIR [--accuracy=config]
      [--point_strides=same,squared]

Every point (split in res2/res3/res4, alpha in 0.1..1.0, each transform mode, each point stride:
default the config's) gets its MACs (XLA
cost analysis), parameters and latency (random weights; all points and the baseline timed in
interleaved rounds, so machine load falls on all alike). With --accuracy, points also get a short
stage-2 fine-tune from the workdir's stage-1 checkpoint (trained first if there is none), evaluated
on the eval split: `config` = the config's transform mode only, `all` = every mode. Writes
DIR/sweep/sweep.csv and the plot (--plot, default DIR/sweep/sweep.png). Fine-tunes live in
DIR/sweep/runs/<point>/ and a rerun reuses the finished ones.
"""

from __future__ import annotations

import os
import time

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from aknet_jax import cli, config as config_lib, cost, experiments, figures, models, timing
from aknet_jax.experiments import finetune, finished_result, measure_costs, stage1_result
from aknet_jax.models import keypoints

ALPHAS = (0.1, 0.3, 0.5, 0.7, 1.0)
COLUMNS = ("model", "name", "split", "alpha", "transform_mode", "point_stride", "num_points",
           "gmacs", "params",
           "params_inference", "latency_ms", "latency_ms_min", "latency_ms_max", "latency_batch",
           "top1", "top5", "keypoint_precision", "keypoint_chance", "finetune_steps",
           "finetune_seconds")


def point_name(split: str, alpha: float, mode: str, stride: str | None = None) -> str:
  """'res4_a0.3_none'; with a stride (a sweep over several): 'res4_a0.3_none_squared'."""
  return f"{split}_a{alpha:g}_{mode}" + (f"_{stride}" if stride else "")


def point_config(config: ml_collections.ConfigDict, split: str, alpha: float,
                 mode: str, stride: str | None = None) -> ml_collections.ConfigDict:
  """The AK-Net config of one sweep point (stride None: the config's point stride)."""
  cfg = config.copy_and_resolve_references()
  cfg.model.aknet.split, cfg.model.aknet.alpha, cfg.model.aknet.transform_mode = split, alpha, mode
  if stride is not None:
    cfg.model.aknet.point_stride = stride
  return config_lib.validate(cfg)


def num_points(cfg: ml_collections.ConfigDict) -> int:
  h, w = models.feature_grid(cfg)
  return keypoints.num_points(cfg.model.aknet.alpha, cfg.dataset.num_segments, h, w)


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *, accuracy: str = "config",
              steps: int = 100, batch: int = 8, reps: int = 3, splits=config_lib.SPLITS,
              alphas=ALPHAS, modes=config_lib.TRANSFORM_MODES, budget_minutes: float = 0.0,
              plot: str | None = None, strides=None) -> list[dict]:
  """Measures every point, fine-tunes the asked ones, writes the CSV and the plot; returns rows.

  `strides`: point strides to sweep (default: the config's); with several, point names carry
  the stride.
  """
  if accuracy not in ("none", "config", "all"):
    raise ValueError(f"--accuracy: {accuracy!r} is not one of ('none', 'config', 'all')")
  config_lib.validate(config)
  out_dir = os.path.join(workdir, "sweep")
  os.makedirs(out_dir, exist_ok=True)
  base_name = cost.model_name(config, "video_net")
  configs = {base_name: (config, "video_net")}
  strides = list(strides or [config.model.aknet.point_stride])
  for stride in strides:
    if stride not in config_lib.POINT_STRIDES:
      raise ValueError(f"--point_strides: {stride!r} is not one of {config_lib.POINT_STRIDES}")
  for stride in strides:
    for split in splits:
      for alpha in alphas:
        for mode in modes:
          name = point_name(split, alpha, mode, stride if len(strides) > 1 else None)
          configs[name] = (point_config(config, split, alpha, mode, stride), "aknet")

  t0 = time.time()
  costs = measure_costs(configs, batch, reps)
  logging.info("MACs and latency of %d models in %.0fs", len(configs), time.time() - t0)

  rows = []
  for name, (cfg, _) in configs.items():
    is_base = name == base_name
    a, c = cfg.model.aknet, costs[name]
    rows.append({"model": "baseline" if is_base else "aknet", "name": name,
                 "split": "" if is_base else a.split, "alpha": "" if is_base else a.alpha,
                 "transform_mode": "" if is_base else a.transform_mode,
                 "point_stride": "" if is_base else a.point_stride,
                 "num_points": "" if is_base else num_points(cfg),
                 "gmacs": c["gmacs"], "params": c["params"],
                 "params_inference": c["params_inference"],
                 "latency_ms": c["latency_ms"]["median"], "latency_ms_min": c["latency_ms"]["min"],
                 "latency_ms_max": c["latency_ms"]["max"], "latency_batch": batch})
  csv_path = os.path.join(out_dir, "sweep.csv")
  experiments.write_csv(rows, csv_path, COLUMNS)

  if accuracy != "none":
    base = stage1_result(config, workdir)
    rows[0].update(top1=base.get("top1"), top5=base.get("top5"))
    wanted = [r for r in rows[1:]
              if accuracy == "all" or r["transform_mode"] == config.model.aknet.transform_mode]
    done = []
    for i, row in enumerate(accuracy_order(wanted, config.model.aknet.alpha)):
      spent = time.time() - t0
      per_point = sum(done) / len(done) if done else 0.0
      if budget_minutes and spent + per_point > 60 * budget_minutes:
        logging.warning("Time budget of %g min: %d of %d points left without accuracy",
                        budget_minutes, len(wanted) - i, len(wanted))
        break
      t_point = time.time()
      run_dir = os.path.join(out_dir, "runs", row["name"])
      metrics = finished_result(run_dir, steps)
      if metrics is None:
        metrics = finetune(configs[row["name"]][0], workdir, run_dir, steps)
        done.append(time.time() - t_point)
      row.update({k: metrics.get(k) for k in ("top1", "top5", "keypoint_precision",
                                              "keypoint_chance")})
      row.update(finetune_steps=steps, finetune_seconds=round(time.time() - t_point, 1))
      logging.info("sweep point %s: top1 %.4f (%d/%d)", row["name"], row["top1"], i + 1,
                   len(wanted))
      experiments.write_csv(rows, csv_path, COLUMNS)
  device = timing.device_name()
  plot = plot or os.path.join(out_dir, "sweep.png")
  c = config
  title = (f"{c.dataset.name}: {base_name} ResNet-{c.model.depth} (width {c.model.width}), "
           f"{c.dataset.num_segments} x {c.dataset.image_size}²; latency on {device}; "
           f"AK-Net fine-tuned {steps} steps from one stage-1 checkpoint")
  figures.tradeoff_figure(figures.read_sweep(csv_path), plot, title=title)
  logging.info("wrote %s and %s in %.0fs", csv_path, plot, time.time() - t0)
  return rows


def accuracy_order(rows: list[dict], config_alpha: float) -> list[dict]:
  """Fine-tune order: first the smallest, the config's and the largest alpha of every split, then
  the rest, so that a time budget still leaves every split a curve."""
  alphas = [r["alpha"] for r in rows]
  first = {min(alphas), config_alpha, max(alphas)} if alphas else set()
  splits = list(config_lib.SPLITS)
  return sorted(rows, key=lambda r: (r["alpha"] not in first, splits.index(r["split"]),
                                     r["alpha"], r["transform_mode"], r.get("point_stride", "")))


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: modules import each other)."""
  config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                  "Experiment config file[:string].", lock_config=True)
  flags.DEFINE_string("workdir", None, "A run's workdir: its stage-1 checkpoint seeds the "
                      "fine-tunes (trained first if absent); results go to WORKDIR/sweep/.")
  flags.DEFINE_enum("accuracy", "config", ["none", "config", "all"],
                    "Which points get a fine-tune for accuracy: none, the config's transform "
                    "mode, all.")
  flags.DEFINE_integer("steps", 100, "Stage-2 fine-tune steps per point.")
  flags.DEFINE_integer("batch", 8, "Batch size of the latency measurement.")
  flags.DEFINE_integer("reps", 3, "Timed rounds for latency (median reported).")
  flags.DEFINE_list("splits", list(config_lib.SPLITS), "Splits to sweep.")
  flags.DEFINE_list("alphas", [str(a) for a in ALPHAS], "Keypoint ratios to sweep.")
  flags.DEFINE_list("modes", list(config_lib.TRANSFORM_MODES), "Transform modes to sweep.")
  flags.DEFINE_list("point_strides", [], "Point strides (same, squared) to sweep, each with every "
                    "split, alpha and mode (default: the config's).")
  flags.DEFINE_float("budget_minutes", 0.0, "Start no fine-tune that would end the sweep after "
                     "this many minutes (estimated from the points so far; 0 = no limit).")
  flags.DEFINE_string("plot", None, "Where to write the PNG (default WORKDIR/sweep/sweep.png).")


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  if not FLAGS.workdir:
    cli.fail("--workdir is required (a run's workdir; the sweep writes WORKDIR/sweep/)")
  try:
    alphas = [float(a) for a in FLAGS.alphas]
  except ValueError:
    cli.fail(f"--alphas: {','.join(FLAGS.alphas)!r} must be numbers in (0, 1], e.g. 0.1,0.3")
  for name, values, allowed in (("splits", FLAGS.splits, config_lib.SPLITS),
                                ("modes", FLAGS.modes, config_lib.TRANSFORM_MODES),
                                ("point_strides", FLAGS.point_strides, config_lib.POINT_STRIDES)):
    bad = [v for v in values if v not in allowed]
    if bad:
      cli.fail(f"--{name}: {bad} not in {allowed}")
  cli.call(run_sweep, FLAGS.config, FLAGS.workdir, accuracy=FLAGS.accuracy, steps=FLAGS.steps,
           batch=FLAGS.batch, reps=FLAGS.reps, splits=FLAGS.splits, alphas=alphas,
           modes=FLAGS.modes, budget_minutes=FLAGS.budget_minutes, plot=FLAGS.plot,
           strides=FLAGS.point_strides or None)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)

"""The seeded ablation of AK-Net's components (the paper's Tables IV-VI) on one config.

  python -m aknet_jax.ablate --config=configs/synthetic.py:hard --workdir=DIR --seeds=3 \
      [--rows=full,no_ranking,...] [--budget_minutes=M]

Per seed s (train.seed = the config's + s): stage 1 once (DIR/ablation/runs/seed<s>/, the
`baseline` row), then every row's stage 2 from that seed's stage-1 checkpoint
(DIR/ablation/runs/seed<s>/<row>/). A row is a named set of model.aknet / train overrides
(`ROWS`); `full` is the configured AK-Net. Every seed's stage 1 runs first, then row by row (in
`ROWS` order, each row's seeds together), so a budget that stops early drops the last rows whole.
`--stage2_steps=N` makes each row's stage 2 a fine-tune of N steps. A rerun skips the
(row, seed) pairs whose results exist; `--budget_minutes` starts no run that would end after the
budget (estimated from the runs of this invocation) and writes the table of what is done.

Writes DIR/ablation/ablation.csv (one line per row x seed), ablation.md (mean ± std over seeds of
top-1, keypoint precision (chance), points per frame (correlation of per-frame keypoint counts
with the target's visible area; their coefficient of variation), GMACs, latency at batch 1
measured in this process beside the load average, and the paper's figure) and ablation.png.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from aknet_jax import cli, config as config_lib, experiments  # noqa: E402
from aknet_jax import workdir as workdir_lib  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
  what: str  # What the row changes, for the table.
  overrides: dict | None  # Field path -> value; None: the stage-1 baseline.
  paper: str = "—"  # The AK-Net paper's Something-Something V1 top-1 for this row, where given.


BASELINE = "baseline"
# The paper's full model is 47.3 in Table IV, 46.9 in Table V and 48.58 (alpha 50 %) in Table VI:
# it contradicts itself; the table shows all three.
ROWS = {
    BASELINE: Row("stage 1 alone: the backbone AK-Net is compacted from", None,
                  "45.6 (TSM-R50 8f, TSM README)"),
    "full": Row("the configured AK-Net", {}, "47.3 (IV) / 46.9 (V) / 48.58 (VI, α 50 %)"),
    "no_ranking": Row("ranking=score: top-k order, no x + y + τt ranking",
                      {"model.aknet.ranking": "score"}),
    "no_global": Row("concat_global=False: the head sees the points' features alone",
                     {"model.aknet.concat_global": False}),
    "no_transform": Row("transform_mode=none: no transform net T",
                        {"model.aknet.transform_mode": "none"}),
    "pos_embed": Row("position_embedding=True: a learned (x, y, t) embedding added",
                     {"model.aknet.position_embedding": True}),
    "no_aux": Row("aux_head=False: no auxiliary head or loss", {"model.aknet.aux_head": False}),
    "no_reg": Row("reg_weight=0: no heatmap regulariser r_e", {"model.aknet.reg_weight": 0.0}),
    "one_stage": Row("stage2_from=init: AK-Net from stage 1's initialisation, trained once",
                     {"train.stage2_from": "init"}),
    "random_order": Row("ranking=random: a fixed shuffle of the points",
                        {"model.aknet.ranking": "random"}),
    "q_random": Row("q_init=random: Q not compacted from the 2D kernels",
                    {"model.aknet.q_init": "random"}),
}
METRICS = ("top1", "top5", "keypoint_precision", "keypoint_chance", "keypoint_frame_corr",
           "keypoint_frame_cv")
COLUMNS = ("row", "seed", "train_seed", "model", "overrides", "steps") + METRICS + (
    "gmacs", "params", "latency_ms", "latency_batch", "load_average", "seconds")


def parse_rows(names) -> list[str]:
  """The asked rows in `ROWS` order (the baseline always first); ValueError naming the valid ones."""
  names = [n.strip() for n in (names or ROWS) if n.strip()]
  bad = [n for n in names if n not in ROWS]
  if bad:
    raise ValueError(f"--rows: unknown row(s) {', '.join(bad)}; valid rows: {', '.join(ROWS)}")
  return [BASELINE] + [n for n in ROWS if n in names and n != BASELINE]


def row_config(config: ml_collections.ConfigDict, row: str, seed: int) -> ml_collections.ConfigDict:
  """The config of one (row, seed): the row's overrides, train.seed + seed, the stage it trains."""
  cfg = config.copy_and_resolve_references()
  cfg.train.seed = config.train.seed + seed
  overrides = ROWS[row].overrides
  cfg.stage = "1" if overrides is None else "2"
  for path, value in (overrides or {}).items():
    parent = cfg
    *head, leaf = path.split(".")
    for key in head:
      parent = parent[key]
    parent[leaf] = value
  return config_lib.validate(cfg)


def _stage_steps(cfg: ml_collections.ConfigDict, stage: str) -> int | None:
  """The stage's step count where the config fixes it (None: from epochs, known after loading)."""
  t = cfg.train
  if stage == "2" and t.stage2_num_steps > 0:
    return int(t.stage2_num_steps)
  return int(t.num_steps) if t.num_steps > 0 else None


def run_dirs(workdir: str, row: str, seed: int) -> tuple[str, str]:
  """(the seed's stage-1 workdir, the row's own workdir)."""
  seed_dir = os.path.join(workdir, "ablation", "runs", f"seed{seed}")
  return seed_dir, seed_dir if row == BASELINE else os.path.join(seed_dir, row)


def finished(cfg: ml_collections.ConfigDict, workdir: str, row: str, seed: int,
             stage2_steps: int = 0) -> dict | None:
  """The (row, seed)'s recorded metrics, if it finished."""
  stage = cfg.stage
  _, run_dir = run_dirs(workdir, row, seed)
  entry = workdir_lib.stage_result(run_dir, stage)
  steps = stage2_steps if stage == "2" and stage2_steps else _stage_steps(cfg, stage)
  if not entry or "top1" not in entry or (steps is not None and entry.get("step") != steps):
    return None
  return entry


def train(cfg: ml_collections.ConfigDict, workdir: str, row: str, seed: int,
          stage2_steps: int = 0) -> dict:
  """Trains (or resumes) one (row, seed); its metrics. `stage2_steps` > 0: a short stage 2 of
  that many steps (`experiments.finetune`), else the config's stage-2 schedule."""
  seed_dir, run_dir = run_dirs(workdir, row, seed)
  if row == BASELINE:
    from aknet_jax.train import stages  # pylint: disable=g-import-not-at-top  (TensorFlow)
    return stages.train_and_evaluate(cfg, seed_dir)["stage1"]
  cfg = cfg.copy_and_resolve_references()
  cfg.train.keep_checkpoints = 1
  return experiments.finetune(cfg, seed_dir, run_dir, stage2_steps or None)


def run_ablation(config: ml_collections.ConfigDict, workdir: str, *, rows=None, seeds: int = 3,
                 budget_minutes: float = 0.0, stage2_steps: int = 0, latency_reps: int = 5,
                 command: str = "") -> list[dict]:
  """Runs what is missing of rows x seeds within the budget; writes the CSV, table and plot."""
  names = parse_rows(rows)
  if seeds < 1:
    raise ValueError(f"--seeds: {seeds} must be >= 1")
  config_lib.validate(config)
  out_dir = os.path.join(workdir, "ablation")
  os.makedirs(out_dir, exist_ok=True)
  t0 = time.time()
  durations = {"1": [], "2": []}
  results, skipped = {}, []
  stop = False
  # Every seed's stage 1 first, then row by row (each row's seeds together), so that a budget
  # that stops early drops whole rows (the last asked) rather than seeds of every row.
  order = [(BASELINE, s) for s in range(seeds)] + [(r, s) for r in names[1:] for s in range(seeds)]
  for row, seed in order:
    cfg = row_config(config, row, seed)
    entry = finished(cfg, workdir, row, seed, stage2_steps)
    if entry is None and not stop:
      done = durations[cfg.stage] or durations["2"] or durations["1"]
      estimate = sum(done) / len(done) if done else 0.0
      if budget_minutes and time.time() - t0 + estimate > 60 * budget_minutes:
        logging.warning("Time budget of %g min reached: starting no more runs", budget_minutes)
        stop = True
      elif row == BASELINE or (BASELINE, seed) in results:  # Else its stage 1 did not finish.
        t_run = time.time()
        logging.info("ablation: row %s, seed %d (%.0f min so far)", row, seed,
                     (t_run - t0) / 60)
        metrics = train(cfg, workdir, row, seed, stage2_steps)
        # The recorded entry (with its step, MACs, parameters) where the run wrote one.
        entry = dict(finished(cfg, workdir, row, seed, stage2_steps) or metrics,
                     seconds=round(time.time() - t_run, 1))
        durations[cfg.stage].append(time.time() - t_run)
    if entry is None:
      skipped.append((row, seed))
      continue
    results[(row, seed)] = entry
  if skipped:
    logging.warning("not run (budget): %s", ", ".join(f"{r}/seed{s}" for r, s in skipped))

  load = os.getloadavg()
  costs = experiments.measure_costs(
      {row: (row_config(config, row, 0), "video_net" if row == BASELINE else "aknet")
       for row in names}, batch=1, reps=latency_reps)
  lines = []
  for (row, seed), entry in sorted(results.items(), key=lambda kv: (names.index(kv[0][0]),
                                                                     kv[0][1])):
    c = costs[row]
    lines.append(dict({k: entry.get(k) for k in METRICS}, row=row, seed=seed,
                      train_seed=config.train.seed + seed,
                      model="video_net" if row == BASELINE else "aknet",
                      overrides=" ".join(f"{k}={v}" for k, v in
                                         (ROWS[row].overrides or {}).items()),
                      steps=entry.get("step"), gmacs=c["gmacs"], params=c["params_inference"],
                      latency_ms=round(c["latency_ms"]["median"], 3), latency_batch=1,
                      load_average=round(load[0], 2), seconds=entry.get("seconds")))
  experiments.write_csv(lines, os.path.join(out_dir, "ablation.csv"), COLUMNS)
  summary = summarise(lines, names, seeds)
  with open(os.path.join(out_dir, "ablation.md"), "w") as f:
    f.write(markdown(summary, config, seeds, load, latency_reps, command, skipped,
                     stage2_steps))
  plot(summary, os.path.join(out_dir, "ablation.png"),
       title=f"{config.dataset.name}/{config.dataset.builder_config or 'default'}: top-1 over "
       f"{seeds} seed(s), mean ± std")
  logging.info("wrote %s/ablation.{csv,md,png} in %.0fs", out_dir, time.time() - t0)
  return lines


def _mean_std(values) -> tuple[float, float, int] | None:
  v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
  if not v:
    return None
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def summarise(lines: list[dict], names: list[str], seeds: int) -> list[dict]:
  """Per row: {row, n, metric -> (mean, std, n)} and its costs."""
  out = []
  for row in names:
    mine = [r for r in lines if r["row"] == row]
    s = {"row": row, "n": len(mine)}
    for k in METRICS:
      s[k] = _mean_std(r.get(k) for r in mine)
    # Paired by seed: the row's top-1 minus `full`'s of the same seed (the same stage 1), which
    # removes the seed-to-seed spread of stage 1 from the comparison.
    full = {r["seed"]: r["top1"] for r in lines if r["row"] == "full" and r["top1"] is not None}
    s["delta_top1"] = None if row == "full" else _mean_std(
        float(r["top1"]) - float(full[r["seed"]]) for r in mine
        if r["top1"] is not None and r["seed"] in full)
    if mine:
      s.update(gmacs=mine[0]["gmacs"], latency_ms=mine[0]["latency_ms"])
    out.append(s)
  return out


def _fmt(ms, scale: float = 100.0, digits: int = 1) -> str:
  if ms is None:
    return "—"
  mean, std, n = ms
  return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" + ("" if n > 1 else " (1 seed)")


def markdown(summary: list[dict], config, seeds: int, load, reps: int, command: str,
             skipped, stage2_steps: int = 0) -> str:
  """The ablation table (percentages; mean ± sample std over seeds)."""
  d, t = config.dataset, config.train
  timed_note = ("latency measured with load average < 0.5" if load[0] < 0.5 else
                "measured under load; rerun for timing")
  head = [f"# Ablation: {d.name}/{d.builder_config or 'default'}, {seeds} seed(s)", ""]
  if command:
    head += ["```", command, "```", ""]
  head += [
      f"Stage 1: {t.num_steps or f'{t.num_epochs} epochs'} steps; stage 2: "
      f"{stage2_steps or t.stage2_num_steps or 'as stage 1'} steps per row; batch {t.batch_size}; chance "
      f"1/{d.num_classes} = {100 / d.num_classes:.1f} %. Top-1, top-5 and keypoint precision in "
      "%, mean ± std (sample, ddof 1) over seeds; Δ: the row's top-1 minus `full`'s of the same "
      "seed (same stage 1), mean ± std over seeds. Points per frame: the Pearson correlation of "
      "each clip's per-frame keypoint counts with the target's visible area per frame (mean "
      "over clips where both vary), and the coefficient of variation of the counts. "
      f"Latency: batch 1, median of {reps} timed calls, in the ablation's process, load average "
      f"(1/5/15 min) {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}: {timed_note}. Paper: AK-Net "
      "(Chen et al.) Something-Something V1 top-1, where it gives the row; its full model is "
      "47.3 in Table IV, 46.9 in Table V and 48.58 at α 50 % in Table VI.", ""]
  table = ["| row | seeds | top-1 | Δ top-1 vs full (paired) | top-5 | keypoint precision "
           "(chance) | points/frame corr | points/frame CV | GMACs | latency ms "
           f"({'under load' if load[0] >= 0.5 else 'idle'}) | paper top-1 | what it changes |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
  for s in summary:
    row = s["row"]
    kp = "—" if s["keypoint_precision"] is None else (
        f"{_fmt(s['keypoint_precision'])} ({_fmt(s['keypoint_chance'], digits=2).split(' ±')[0]})")
    corr, cv = s["keypoint_frame_corr"], s["keypoint_frame_cv"]
    table.append(
        f"| {row} | {s['n']} | {_fmt(s['top1'])} | "
        f"{'—' if s['delta_top1'] is None else _fmt(s['delta_top1'])} | {_fmt(s['top5'])} | {kp} | "
        f"{_fmt(corr, 1.0, 2)} | {_fmt(cv, 1.0, 2)} | "
        f"{s['gmacs']:.4f} | {s['latency_ms']:.2f} | {ROWS[row].paper} | {ROWS[row].what} |"
        if s["n"] else f"| {row} | 0 | — | — | — | — | — | — | — | — | {ROWS[row].paper} | "
        f"{ROWS[row].what} |")
  tail = [""]
  if skipped:
    tail += ["Not run (time budget): " + ", ".join(f"{r}/seed{s}" for r, s in skipped) + ".", ""]
  return "\n".join(head + table + tail)


def plot(summary: list[dict], path: str, title: str = ""):
  """Top-1 mean ± std per row; the baseline's mean as a line."""
  rows = [s for s in summary if s["top1"] is not None]
  fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 4))
  aknet = [s for s in rows if s["row"] != BASELINE]
  x = np.arange(len(aknet))
  ax.bar(x, [100 * s["top1"][0] for s in aknet], yerr=[100 * s["top1"][1] for s in aknet],
         capsize=3, color=["tab:orange" if s["row"] == "full" else "tab:blue" for s in aknet])
  base = next((s for s in rows if s["row"] == BASELINE), None)
  if base:
    ax.axhline(100 * base["top1"][0], color="k", ls="--", lw=1,
               label=f"baseline (stage 1) {100 * base['top1'][0]:.1f}")
    ax.legend(fontsize=8)
  ax.set_xticks(x, [s["row"] for s in aknet], rotation=35, ha="right", fontsize=8)
  ax.set_ylabel("top-1 (%)")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                  "Experiment config file[:string].", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where the runs and the table go (WORKDIR/ablation/).")
  flags.DEFINE_integer("seeds", 3, "Seeds per row (train.seed = the config's + 0..seeds-1).")
  flags.DEFINE_list("rows", list(ROWS), f"Rows to run ({', '.join(ROWS)}); the baseline "
                    "(stage 1) always runs: every other row starts from it.")
  flags.DEFINE_float("budget_minutes", 0.0, "Start no run that would end after this many minutes "
                     "(estimated from the runs so far; 0 = no limit); the table shows what is done.")
  flags.DEFINE_integer("stage2_steps", 0, "> 0: each row's stage 2 is a fine-tune of this many "
                       "steps (warmup at most a fifth); 0: the config's stage-2 schedule.")
  flags.DEFINE_integer("latency_reps", 5, "Timed calls per row for latency (median reported).")
  flags.DEFINE_string("compilation_cache_dir",
                      cli.COMPILATION_CACHE,
                      "Persistent XLA compilation cache, as for aknet_jax.main: the seeds of a "
                      "row reuse its compiled steps ('' = off; $JAX_COMPILATION_CACHE_DIR wins).")


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  if not FLAGS.workdir:
    cli.fail("--workdir is required (the ablation writes WORKDIR/ablation/)")
  try:
    parse_rows(FLAGS.rows)
  except ValueError as e:
    cli.fail(str(e))
  import sys  # pylint: disable=g-import-not-at-top
  cli.use_compilation_cache(FLAGS.compilation_cache_dir)
  command = "python -m aknet_jax.ablate " + " ".join(sys.argv[1:])
  cli.call(run_ablation, FLAGS.config, FLAGS.workdir, rows=FLAGS.rows, seeds=FLAGS.seeds,
           budget_minutes=FLAGS.budget_minutes, stage2_steps=FLAGS.stage2_steps,
           latency_reps=FLAGS.latency_reps,
           command=command)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)

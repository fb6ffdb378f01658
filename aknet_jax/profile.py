"""Measured cost of a config's backbone baseline and its AK-Net: MACs, latency, memory, clips/s.

  python -m aknet_jax.profile --config=configs/ssv2.py [--batch=1,8] [--json=FILE] [--reps=5]
      [--transform_modes=full,lowrank,none] [--parts] [--train_batch=B] [--ops]
      [--against=torch] [--processes=K]

Latency is the jitted inference function after warm-up, the device synchronised after every call;
the models of one batch size are timed in interleaved rounds (`aknet_jax.cost`). `--parts` times
AK-Net piece by piece (F, keypoint selection, T, Q, head) to show where its time goes.
`--processes=K` repeats the run in K fresh processes and reports each one's paired ratios and their
median: a process's state moves a CPU ratio by more than its rounds' spread. Weights are
random (He-normal, drawn with NumPy): timing does not depend on their values, and it avoids
initialising the ~270 M-parameter full transform net with threefry. With bf16 on a known
accelerator the training step also reports its MFU.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Callable

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from aknet_jax import cli, config as config_lib, models, workdir as workdir_lib
from aknet_jax.cost import (aknet_parts, model_name, profile_inference, profile_train_steps,
                            ratios)
from aknet_jax.timing import TRAIN_WARMUP, across_processes, device_name, random_variables


def run(config: ml_collections.ConfigDict, batches: list[int], *, reps: int, warmup: int,
        train_batch: int, train_reps: int, parts: bool, train_warmup: int = TRAIN_WARMUP,
        transform_modes: list[str] | None = None, point_strides: list[str] | None = None,
        on_phase: Callable[[dict], None] | None = None) -> dict:
  """The whole report: inference entries per batch size, train steps, AK-Net's parts.

  The baseline and one AK-Net per transform mode (default: the config's) are timed together.
  `on_phase(report)` runs before the parts and before the training steps: a run killed in either
  (out of host memory with several full transforms) keeps what it measured.
  """
  config_lib.validate(config)
  base = (config, workdir_lib.STAGE_KINDS["1"])
  aks = []
  strides = point_strides or [config.model.aknet.point_stride]
  for mode in transform_modes or [config.model.aknet.transform_mode]:
    if mode not in config_lib.TRANSFORM_MODES:
      raise ValueError(f"--transform_modes: {mode!r} is not one of {config_lib.TRANSFORM_MODES}")
    for stride in strides:
      if stride not in config_lib.POINT_STRIDES:
        raise ValueError(f"--point_strides: {stride!r} is not one of {config_lib.POINT_STRIDES}")
      ak = config.copy_and_resolve_references()
      ak.model.aknet.transform_mode, ak.model.aknet.point_stride = mode, stride
      aks.append((ak, "aknet"))
  report = {"device": device_name(), "backend": jax.default_backend(),
            "load_average": list(os.getloadavg()),
            "config": {"backbone": config.model.backbone, "depth": int(config.model.depth),
                       "width": int(config.model.width),
                       "frames": int(config.dataset.num_segments),
                       "image_size": int(config.dataset.image_size),
                       "split": config.model.aknet.split, "alpha": float(config.model.aknet.alpha),
                       "transform_modes": [a.model.aknet.transform_mode for a, _ in aks],
                       "bf16": bool(config.half_precision)},
            "macs_convention": "gmacs = XLA cost-analysis flops / 2 / 1e9 per clip, inference",
            "models": [], "ratios": [], "train": [], "parts": {}}
  variables = [random_variables(models.variable_shapes(c, kind), seed=i)
               for i, (c, kind) in enumerate([base] + aks)]
  for b in batches:
    logging.info("Timing inference at batch %d", b)
    entries = profile_inference([base] + aks, b, reps=reps, warmup=warmup, variables=variables)
    report["models"].extend(entries)
    report["ratios"].extend(ratios(entries[0], e) for e in entries[1:])
  if parts:
    if on_phase is not None:
      on_phase(report)
    for b in batches:
      for (ak, _), v in zip(aks, variables[1:]):
        name = model_name(ak, "aknet")
        logging.info("Timing the parts of %s at batch %d", name, b)
        report["parts"][f"{name}, batch {b}"] = aknet_parts(
            ak, v, b, reps=reps, warmup=warmup, baseline=(*base, variables[0]))
  del variables
  if on_phase is not None and train_batch > 0:
    on_phase(report)
  if train_batch > 0:
    logging.info("Timing the training steps at batch %d, interleaved", train_batch)
    report["train"] = profile_train_steps([base] + aks, train_batch, reps=train_reps,
                                          warmup=train_warmup)
  return report


def format_report(report: dict) -> str:
  """Markdown tables of a report."""
  lines = [f"Device: {report['device']}. GFLOPs = multiply-accumulates per clip (XLA cost "
           "analysis / 2); latency = one jitted inference call on the whole batch.", "",
           "| model | batch | GFLOPs (MACs) | params (M) | latency median (ms) | min | max | "
           "clips/s | weights + input (MiB) | XLA temp (MiB) | device peak (MiB) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  mib = lambda b: f"{b / 2**20:.0f}" if b else "—"  # noqa: E731
  for m in report["models"]:
    lat, mem = m["latency_ms"], m["memory"]
    lines.append(f"| {m['name']} | {m['batch']} | {m['gmacs']:.4g} | {m['params'] / 1e6:.1f} | "
                 f"{lat['median']:.1f} | {lat['min']:.1f} | {lat['max']:.1f} | "
                 f"{m['clips_per_s']:.2f} | {mib(mem['arguments_bytes'])} | "
                 f"{mib(mem['xla_temp_bytes'])} | {mib(mem['device_peak_bytes'])} |")
  lines += ["", "Ratios to the baseline (paired: median over rounds of the per-round ratio):", "",
            "| model | batch | MACs ratio | latency ratio, paired | − MACs ratio | "
            "ratio of medians | ratio of minima |", "|---|---:|---:|---:|---:|---:|---:|"]
  for r in report["ratios"]:
    lines.append(f"| {r['model']} | {r['batch']} | {r['macs_ratio']:.3f} | "
                 f"{r['latency_ratio_paired']:.3f} | "
                 f"{r['latency_ratio_paired'] - r['macs_ratio']:+.3f} | "
                 f"{r['latency_ratio']:.3f} | {r['latency_ratio_of_min']:.3f} |")
  if report["train"]:
    lines += ["", "Training steps, the models in interleaved rounds (ratio, paired: median over "
              "rounds of the per-round ratio to the baseline's step):", "",
              "| training step | batch | step median (ms) | min | max | ratio, paired | clips/s "
              "| TFLOP/step | TFLOP/s | MFU |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in report["train"]:
      mfu = f"{100 * t['mfu']:.1f} %" if t["mfu"] is not None else "—"
      ratio = f"{t['step_ratio_paired']:.3f}" if "step_ratio_paired" in t else "—"
      lat = t["step_ms"]
      lines.append(f"| {t['name']}{' (bf16)' if t['bf16'] else ''} | {t['batch']} | "
                   f"{lat['median']:.0f} | {lat['min']:.0f} | {lat['max']:.0f} | {ratio} | "
                   f"{t['clips_per_s']:.2f} | {t['tflops_per_step']:.3g} | "
                   f"{t['tflops_per_s']:.3g} | {mfu} |")
  for key, parts in report["parts"].items():
    lines += ["", f"Parts of {key} (each jitted alone, median ms; chained pieces vs "
              f"the whole model: logits differ by {parts['logits_rel_diff']:.1e} relative). "
              "Shares are of the baseline's time (paired) and MACs; time share / MACs share "
              "above 1: slower per MAC than the baseline as a whole:", "",
              "| part | ms | GMACs per clip | time share | MACs share | time / MACs |",
              "|---|---:|---:|---:|---:|---:|"]
    shares = parts.get("shares", {})
    for k in list(parts["ms"]) + [k for k in shares if k not in parts["ms"]]:
      ms = f"{parts['ms'][k]:.1f}" if k in parts["ms"] else "—"
      macs = f"{parts['gmacs'][k]:.3g}" if k in parts.get("gmacs", {}) else "—"
      sh = shares.get(k)
      if sh is None:
        cells = "— | — | —"
      else:  # Time per MAC says nothing for a piece with next to no MACs (selection, head).
        per_mac = f"{sh['time'] / sh['macs']:.2f}" if sh["macs"] >= 1e-3 else "—"
        cells = f"{sh['time']:.3f} | {sh['macs']:.3f} | {per_mac}"
      lines.append(f"| {k} | {ms} | {macs} | {cells} |")
  return "\n".join(lines)


def combine(reports: list[dict]) -> dict:
  """`run` reports of fresh processes as each one's paired ratios per row and their median:
  {'processes', 'inference': [{model, batch, macs_ratio, paired: [...], median}],
  'train': [{name, batch, paired, median}]} (the baseline's own training row left out)."""
  rows = across_processes([
      {**{("inference", r["model"], r["batch"]): r for r in report["ratios"]},
       **{("train", t["name"], t["batch"]): t for t in report["train"] if "step_ratio_paired" in t}}
      for report in reports])
  inference, train = [], []
  for (part, name, batch), rs in rows.items():
    if part == "inference":
      paired = [r["latency_ratio_paired"] for r in rs]
      inference.append({"model": name, "batch": batch, "macs_ratio": rs[0]["macs_ratio"],
                        "paired": paired, "median": statistics.median(paired)})
    else:
      paired = [t["step_ratio_paired"] for t in rs]
      train.append({"name": name, "batch": batch, "paired": paired,
                    "median": statistics.median(paired)})
  return {"processes": reports, "inference": inference, "train": train}


def format_combined(combined: dict) -> str:
  """Markdown of a `combine` result: each process's paired ratio and the median across them."""
  loads = ", ".join(f"{r['load_average'][0]:.2f}" for r in combined["processes"])
  lines = [f"Ratios to the baseline in {len(combined['processes'])} fresh processes, one after "
           f"another (each the paired median of its rounds; 1-minute load average at their "
           f"starts: {loads}):", "",
           "| model | batch | MACs ratio | latency ratio per process | median | − MACs ratio |",
           "|---|---:|---:|---|---:|---:|"]
  for r in combined["inference"]:
    lines.append(f"| {r['model']} | {r['batch']} | {r['macs_ratio']:.3f} | "
                 f"{', '.join(f'{x:.3f}' for x in r['paired'])} | **{r['median']:.3f}** | "
                 f"{r['median'] - r['macs_ratio']:+.3f} |")
  if combined["train"]:
    lines += ["", "| training step / the baseline's | batch | per process | median |",
              "|---|---:|---|---:|"]
    lines += [f"| {t['name']} | {t['batch']} | {', '.join(f'{x:.3f}' for x in t['paired'])} | "
              f"**{t['median']:.3f}** |" for t in combined["train"]]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: modules import each other)."""
  config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                  "Experiment config file[:string].", lock_config=True)
  flags.DEFINE_list("batch", ["1"], "Inference batch size(s), comma-separated (e.g. 1,8).")
  flags.DEFINE_string("json", None, "Also write the report as JSON to this file (first before the "
                      "training steps, then complete).")
  flags.DEFINE_integer("reps", 5, "Timed calls per model and batch size (the median is reported).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls per model before timing (after compilation).")
  flags.DEFINE_integer("train_batch", -1,
                       "Training-step batch (-1 = the largest --batch, 0 = skip).")
  flags.DEFINE_integer("train_reps", 5, "Timed training steps per model (interleaved rounds).")
  flags.DEFINE_integer("train_warmup", TRAIN_WARMUP, "Untimed training rounds before timing (after "
                       "compilation): the first steps fault the process's buffers in.")
  flags.DEFINE_bool("parts", False, "Also time AK-Net piece by piece (where does the time go).")
  flags.DEFINE_list("transform_modes", [], "AK-Net transform modes to time against the baseline "
                    "in the same rounds (default: the config's).")
  flags.DEFINE_list("point_strides", [], "AK-Net point strides (same, squared) to time in the "
                    "same rounds, each with every transform mode (default: the config's).")
  flags.DEFINE_bool("ops", False, "Instead: time one training step (--train_batch, default 2) of "
                    "the config's stage op by op from a profiler trace (`aknet_jax.op_profile`).")
  flags.DEFINE_enum("against", None, ["torch"], "Instead: time the config's TSN / TSM against "
                    "the PyTorch reference with the same weights (needs the convert extra); with stage=2 "
                    "AK-Net's training step is timed against the torch baseline's too.")
  flags.DEFINE_integer("processes", 1, "Run the comparison (AK-Net against its baseline, or "
                       "--against=torch) in this many fresh processes, one after another, and "
                       "report each one's median ratios and their median (a process's state moves "
                       "a CPU ratio by up to 0.1).")


def child_argv(argv: list[str], json_path: str) -> list[str]:
  """This command's arguments for one of its `--processes` runs: one process, its own --json."""
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg in ("--processes", "--json"):
      skip = True  # The value is the next argument.
    elif not arg.startswith(("--processes=", "--json=")):
      out.append(arg)
  return out + ["--processes=1", f"--json={json_path}"]


def _in_fresh_processes(k: int) -> list[dict]:
  """The JSON report of each of k runs of this command, one after another, in fresh processes
  (their own tables print as they finish)."""
  reports = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(k):
      path = os.path.join(tmp, f"process_{i}.json")
      cmd = [sys.executable, "-m", "aknet_jax.profile", *child_argv(sys.argv[1:], path)]
      code = subprocess.run(cmd, check=False).returncode
      if code != 0:
        cli.fail(f"--processes: run {i + 1} of {k} failed (exit code {code}); its output is above")
      with open(path) as f:
        reports.append(json.load(f))
  return reports


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  try:
    batches = [int(b) for b in FLAGS.batch]
  except ValueError:
    cli.fail(f"--batch: {','.join(FLAGS.batch)!r} must be integers, e.g. --batch=1,8")
  if not batches or min(batches) < 1 or FLAGS.reps < 1:
    cli.fail("--batch values and --reps must be >= 1")
  train_batch = max(batches) if FLAGS.train_batch < 0 else FLAGS.train_batch
  if FLAGS.processes < 1 or (FLAGS.processes > 1 and FLAGS.ops):
    cli.fail(f"--processes={FLAGS.processes}: must be >= 1, and 1 with --ops (an op profile is "
             "not a ratio)")
  if FLAGS.ops:
    from aknet_jax import op_profile  # pylint: disable=g-import-not-at-top
    kind = workdir_lib.STAGE_KINDS["2" if str(FLAGS.config.stage) == "2" else "1"]
    report = cli.call(op_profile.profile_train_ops, FLAGS.config, kind,
                      2 if FLAGS.train_batch < 0 else max(FLAGS.train_batch, 1))
    print(op_profile.format_train_ops(report))
    if FLAGS.json:
      cli.call(workdir_lib.write_json, FLAGS.json, report)
    return
  if FLAGS.against == "torch" and FLAGS.processes > 1:
    from aknet_jax import against_torch  # pylint: disable=g-import-not-at-top (imports torch)
    combined = cli.call(against_torch.combine, _in_fresh_processes(FLAGS.processes))
    print(against_torch.format_combined(combined))
    if FLAGS.json:
      cli.call(workdir_lib.write_json, FLAGS.json, combined)
    return
  if FLAGS.processes > 1:
    combined = cli.call(combine, _in_fresh_processes(FLAGS.processes))
    print(format_combined(combined))
    if FLAGS.json:
      cli.call(workdir_lib.write_json, FLAGS.json, combined)
    return
  if FLAGS.against == "torch":
    from aknet_jax import against_torch  # pylint: disable=g-import-not-at-top (imports torch)
    report = cli.call(against_torch.compare, FLAGS.config, batches, train_batch=train_batch,
                      reps=FLAGS.reps, warmup=FLAGS.warmup, train_warmup=FLAGS.train_warmup)
    print(against_torch.format_report(report))
    if FLAGS.json:
      cli.call(workdir_lib.write_json, FLAGS.json, report)
    return
  report = cli.call(run, FLAGS.config, batches, reps=FLAGS.reps, warmup=FLAGS.warmup,
                    train_batch=train_batch, train_reps=FLAGS.train_reps, parts=FLAGS.parts,
                    train_warmup=FLAGS.train_warmup,
                    transform_modes=FLAGS.transform_modes or None,
                    point_strides=FLAGS.point_strides or None,
                    on_phase=(lambda r: cli.call(workdir_lib.write_json, FLAGS.json, r))
                    if FLAGS.json else None)
  print(format_report(report))
  if FLAGS.json:
    cli.call(workdir_lib.write_json, FLAGS.json, report)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)

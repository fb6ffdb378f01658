"""Measured cost of a config's backbone baseline and its AK-Net: MACs, latency, memory, clips/s.

  python -m aknet_jax.profile --config=configs/ssv2.py [--batch=1,8] [--json=FILE] [--reps=5]
      [--transform_modes=full,lowrank,none] [--parts] [--train_batch=B]

MACs are XLA's cost analysis of one clip's jitted inference (flops / 2, the paper's "GFLOPs").
Latency is the jitted inference function after warm-up, the device synchronised after every call;
the models of one batch size are timed in interleaved rounds, so load from other processes falls on
all alike, and the ratios to the baseline are also taken round by round. `--parts` times AK-Net
piece by piece (F, keypoint selection, T, Q, head) to show where its time goes. Weights are random
(He-normal, drawn with NumPy): timing does not depend on their values, and it avoids initialising
the ~270 M-parameter full transform net with threefry. With bf16 on a known accelerator the
training step also reports its MFU.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from aknet_jax import cli, config as config_lib
from aknet_jax import models, optim, train_step as steps
from aknet_jax.models import keypoints, resnet
from aknet_jax.models.backbone import VideoBackbone
from aknet_jax.models.heatmap import SEHeatmap
from aknet_jax.models.point_net import PointNet
from aknet_jax.models.transform_net import TransformNet

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


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """A copy of `config` building the stage-1 baseline ('1') or AK-Net ('2')."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.stage = stage
  return cfg


def model_name(config: ml_collections.ConfigDict) -> str:
  """'TSM' for the baseline, 'AK-Net-TSM (res4, alpha 0.3, full)' for AK-Net."""
  base = config.model.backbone.upper()
  if str(config.stage) == "1":
    return base
  a = config.model.aknet
  return f"AK-Net-{base} ({a.split}, alpha {a.alpha:g}, {a.transform_mode})"


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


def inference_fn(config: ml_collections.ConfigDict):
  """The jitted inference of `models.build(config)`: (variables, frames) -> logits."""
  model = models.build(config)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def random_frames(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> jax.Array:
  shape = (batch,) + models.input_shape(config)[1:]
  return jax.device_put(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _memory(compiled) -> dict:
  """Memory: weights + inputs of the compiled call; XLA's temporaries and the device's peak where
  the backend reports them (XLA:CPU plans no temporaries, and CPU devices keep no statistics)."""
  out = {"arguments_bytes": None, "xla_temp_bytes": None, "device_peak_bytes": None}
  try:
    analysis = compiled.memory_analysis()
    out["arguments_bytes"] = int(analysis.argument_size_in_bytes)
    if jax.default_backend() != "cpu":
      out["xla_temp_bytes"] = int(analysis.temp_size_in_bytes)
  except (AttributeError, NotImplementedError, TypeError):
    pass
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def profile_inference(configs: list[ml_collections.ConfigDict], batch: int, *, reps: int = 5,
                      warmup: int = 1, variables: list | None = None) -> list[dict]:
  """One entry per config: name, gmacs, params, latency_ms, clips_per_s, batch, memory.

  The configs are timed in interleaved rounds. `variables`: per config, else random ones.
  """
  entries, calls = [], {}
  for i, cfg in enumerate(configs):
    shapes = models.variable_shapes(cfg)
    v = variables[i] if variables else random_variables(shapes, seed=i)
    frames = random_frames(cfg, batch)
    fn = inference_fn(cfg)
    compiled = fn.lower(v, frames).compile()
    calls[i] = (lambda c=compiled, v=v, x=frames: c(v, x))
    entries.append({"name": model_name(cfg), "batch": batch,
                    "gmacs": models.gmacs(cfg, shapes=shapes),
                    "params": models.param_count(cfg, inference=True, shapes=shapes),
                    "memory": _memory(compiled)})
  times = time_interleaved(calls, reps, warmup)
  for i, entry in enumerate(entries):
    entry["latency_ms"] = latency_stats(times[i])
    entry["samples_ms"] = [1e3 * t for t in times[i]]
    entry["clips_per_s"] = batch / (entry["latency_ms"]["median"] / 1e3)
  return entries


def ratios(base: dict, other: dict) -> dict:
  """MACs and latency ratios of two entries of one `profile_inference` call.

  `latency_ratio_paired` is the median over rounds of the per-round ratio: both calls of a round
  ran back to back, so a change of machine load between rounds cancels out.
  """
  paired = [o / b for o, b in zip(other["samples_ms"], base["samples_ms"])]
  return {"batch": base["batch"], "model": other["name"],
          "macs_ratio": other["gmacs"] / base["gmacs"],
          "latency_ratio": other["latency_ms"]["median"] / base["latency_ms"]["median"],
          "latency_ratio_paired": statistics.median(paired),
          "latency_ratio_of_min": other["latency_ms"]["min"] / base["latency_ms"]["min"]}


def profile_train_step(config: ml_collections.ConfigDict, batch: int, *, reps: int = 3,
                       warmup: int = 1) -> dict:
  """Clips/s of the pmapped training step (one device), its flops and, on known chips, MFU."""
  device = jax.local_devices()[:1]
  shapes = models.variable_shapes(config)
  variables = random_variables(shapes)
  model = models.build(config, bn_axis_name=steps.AXIS)
  tx, schedule = optim.create_optimizer(config, variables["params"], 1000)
  state = flax.jax_utils.replicate(steps.create_state(model, variables, tx), devices=device)
  # Give the state the sharding the step's outputs have (mesh axis 'batch'): otherwise the second
  # step compiles the program again, as jax.pmap keys its cache on the input shardings.
  state = jax.pmap(lambda s: s, axis_name=steps.AXIS, devices=device)(state)
  d = config.dataset
  frames = random_frames(config, batch)[None]
  labels = np.arange(batch, dtype=np.int32)[None] % d.num_classes
  batch_arrays = {"frames": np.asarray(frames), "label": labels}
  p_step = jax.pmap(lambda s, b: steps.train_step(s, b, config=config, schedule=schedule),
                    axis_name=steps.AXIS, devices=device, donate_argnums=(0,))
  flops = float(p_step.lower(state, batch_arrays).cost_analysis()["flops"])
  holder = {"state": state}

  def run():
    holder["state"], metrics = p_step(holder["state"], batch_arrays)
    return metrics

  seconds = time_interleaved({"train": run}, reps, warmup)["train"]
  lat = latency_stats(seconds)
  achieved = flops / (lat["median"] / 1e3) / 1e12
  peak = peak_tflops()
  return {"batch": batch, "step_ms": lat, "clips_per_s": batch / (lat["median"] / 1e3),
          "tflops_per_step": flops / 1e12, "tflops_per_s": achieved,
          "bf16": bool(config.half_precision),
          "mfu": achieved / peak if peak and config.half_precision else None}


def peak_tflops() -> float | None:
  """The bf16 dense peak of the first device, when BF16_PEAK_TFLOPS knows it."""
  kind = jax.local_devices()[0].device_kind
  return next((v for k, v in BF16_PEAK_TFLOPS.items() if k.lower() in kind.lower()), None)


def aknet_parts(config: ml_collections.ConfigDict, variables: dict, batch: int, *,
                reps: int = 5, warmup: int = 1, baseline: tuple | None = None) -> dict:
  """Median ms of each piece of AK-Net's inference, each jitted alone, fed the previous output.

  The pieces are those of `AKNet.__call__`: F up to the split; heatmap + top-k + gather + ranking
  + coordinates; the transform net T; the point sub-net Q; pooling + the head. 'whole' is the
  full jitted model for comparison (one fused program is usually a little faster than the sum).
  `baseline`: (config, variables) of the stage-1 model, timed in the same rounds.
  Returns {'ms': {piece: median ms}, 'logits_rel_diff': max |chained - whole| / max |whole|}.
  """
  cfg, ak = config, config.model.aknet
  dtype = jnp.bfloat16 if cfg.half_precision else jnp.float32
  p, bs = variables["params"], variables.get("batch_stats", {})
  t = cfg.dataset.num_segments
  split = resnet.STAGES.index(ak.split)

  def sub(name):
    out = {"params": p[name]}
    if name in bs:
      out["batch_stats"] = bs[name]
    return out

  backbone = VideoBackbone(cfg)
  heat_net = SEHeatmap(ak.se_reduction, dtype=dtype)
  transform = TransformNet(ak.transform_mode, ak.transform_rank, cfg.model.bn_momentum, None, dtype)
  points_net = PointNet(resnet.STAGE_SIZES[cfg.model.depth], split + 1, cfg.model.width,
                        bottleneck=cfg.model.depth >= 50, use_bias=cfg.model.backbone == "tdn",
                        bn_momentum=cfg.model.bn_momentum, dtype=dtype)

  @jax.jit
  def f_split(frames):
    x = backbone.apply(sub("backbone"), frames, train=False, upto=ak.split)
    return x.reshape((x.shape[0] // t, t) + x.shape[1:])

  @jax.jit
  def select(x):
    h, w = x.shape[2], x.shape[3]
    heat = heat_net.apply(sub("heatmap"), x)
    n = keypoints.num_points(ak.alpha, t, h, w)
    pts, xyt = keypoints.select_and_rank(heat, x, n, keypoints.default_tau(ak.tau, h, w))
    return pts, keypoints.normalize_coordinates(xyt)

  @jax.jit
  def transform_fn(pts, coords):
    if ak.transform_mode == "none":
      return pts
    return transform.apply(sub("transform"), pts, coords, train=False)

  @jax.jit
  def q_fn(pts):
    return points_net.apply(sub("points"), pts, train=False)

  head = flax.linen.Dense(cfg.dataset.num_classes, dtype=dtype)

  @jax.jit
  def head_fn(x, q):
    z = jnp.concatenate([jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)),
                         jnp.mean(q.astype(jnp.float32), axis=1)], axis=-1)
    return head.apply({"params": p["head"]}, z)

  frames = random_frames(cfg, batch)
  x = f_split(frames)
  pts, coords = select(x)
  pt = transform_fn(pts, coords)
  q = q_fn(pt)
  whole = inference_fn(cfg)
  reference = whole(variables, frames)
  diff = float(jnp.max(jnp.abs(head_fn(x, q) - reference)) / jnp.max(jnp.abs(reference)))
  calls = {"F (backbone to split; the baseline runs the same)": lambda: f_split(frames),
           "heatmap + top-k + gather + rank": lambda: select(x),
           "transform T": lambda: transform_fn(pts, coords),
           "point sub-net Q": lambda: q_fn(pt),
           "pool + head": lambda: head_fn(x, q),
           "whole (one program)": lambda: whole(variables, frames)}
  if baseline is not None:
    base_fn, base_vars = inference_fn(baseline[0]), baseline[1]
    calls[f"baseline {model_name(baseline[0])} (whole)"] = lambda: base_fn(base_vars, frames)
  times = time_interleaved(calls, reps, warmup)
  return {"ms": {name: latency_stats(s)["median"] for name, s in times.items()},
          "logits_rel_diff": diff}


def run(config: ml_collections.ConfigDict, batches: list[int], *, reps: int, warmup: int,
        train_batch: int, train_reps: int, parts: bool,
        transform_modes: list[str] | None = None) -> dict:
  """The whole report: inference entries per batch size, train steps, AK-Net's parts.

  The baseline and one AK-Net per transform mode (default: the config's) are timed together.
  """
  config_lib.validate(config)
  base = stage_config(config, "1")
  aks = []
  for mode in transform_modes or [config.model.aknet.transform_mode]:
    if mode not in config_lib.TRANSFORM_MODES:
      raise ValueError(f"--transform_modes: {mode!r} is not one of {config_lib.TRANSFORM_MODES}")
    ak = stage_config(config, "2")
    ak.model.aknet.transform_mode = mode
    aks.append(ak)
  report = {"device": device_name(), "backend": jax.default_backend(),
            "config": {"backbone": config.model.backbone, "depth": int(config.model.depth),
                       "width": int(config.model.width),
                       "frames": int(config.dataset.num_segments),
                       "image_size": int(config.dataset.image_size),
                       "split": config.model.aknet.split, "alpha": float(config.model.aknet.alpha),
                       "transform_modes": [a.model.aknet.transform_mode for a in aks],
                       "bf16": bool(config.half_precision)},
            "macs_convention": "gmacs = XLA cost-analysis flops / 2 / 1e9 per clip, inference",
            "models": [], "ratios": [], "train": [], "parts": {}}
  variables = [random_variables(models.variable_shapes(c), seed=i)
               for i, c in enumerate([base] + aks)]
  for b in batches:
    logging.info("Timing inference at batch %d", b)
    entries = profile_inference([base] + aks, b, reps=reps, warmup=warmup, variables=variables)
    report["models"].extend(entries)
    report["ratios"].extend(ratios(entries[0], e) for e in entries[1:])
  if parts:
    for b in batches:
      for ak, v in zip(aks, variables[1:]):
        logging.info("Timing the parts of %s at batch %d", model_name(ak), b)
        report["parts"][f"{model_name(ak)}, batch {b}"] = aknet_parts(
            ak, v, b, reps=reps, warmup=warmup, baseline=(base, variables[0]))
  del variables
  if train_batch > 0:
    for cfg in [base] + aks:
      logging.info("Timing the training step of %s at batch %d", model_name(cfg), train_batch)
      entry = profile_train_step(cfg, train_batch, reps=train_reps, warmup=1)
      entry["name"] = model_name(cfg)
      report["train"].append(entry)
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
    lines += ["", "| training step | batch | step median (ms) | clips/s | TFLOP/step | TFLOP/s "
              "| MFU |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for t in report["train"]:
      mfu = f"{100 * t['mfu']:.1f} %" if t["mfu"] is not None else "—"
      lines.append(f"| {t['name']}{' (bf16)' if t['bf16'] else ''} | {t['batch']} | "
                   f"{t['step_ms']['median']:.0f} | {t['clips_per_s']:.2f} | "
                   f"{t['tflops_per_step']:.3g} | {t['tflops_per_s']:.3g} | {mfu} |")
  for key, parts in report["parts"].items():
    lines += ["", f"Parts of {key} (each jitted alone, median ms; chained pieces vs "
              f"the whole model: logits differ by {parts['logits_rel_diff']:.1e} relative):", "",
              "| part | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in parts["ms"].items()]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: modules import each other)."""
  config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                  "Experiment config file[:string].", lock_config=True)
  flags.DEFINE_list("batch", ["1"], "Inference batch size(s), comma-separated (e.g. 1,8).")
  flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
  flags.DEFINE_integer("reps", 5, "Timed calls per model and batch size (the median is reported).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls per model before timing (after compilation).")
  flags.DEFINE_integer("train_batch", -1,
                       "Training-step batch (-1 = the largest --batch, 0 = skip).")
  flags.DEFINE_integer("train_reps", 3, "Timed training steps per model.")
  flags.DEFINE_bool("parts", False, "Also time AK-Net piece by piece (where does the time go).")
  flags.DEFINE_list("transform_modes", [], "AK-Net transform modes to time against the baseline "
                    "in the same rounds (default: the config's).")


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  try:
    batches = [int(b) for b in FLAGS.batch]
  except ValueError:
    cli.fail(f"--batch: {','.join(FLAGS.batch)!r} must be integers, e.g. --batch=1,8")
  if not batches or min(batches) < 1 or FLAGS.reps < 1:
    cli.fail("--batch values and --reps must be >= 1")
  train_batch = max(batches) if FLAGS.train_batch < 0 else FLAGS.train_batch
  report = cli.call(run, FLAGS.config, batches, reps=FLAGS.reps, warmup=FLAGS.warmup,
                    train_batch=train_batch, train_reps=FLAGS.train_reps, parts=FLAGS.parts,
                    transform_modes=FLAGS.transform_modes or None)
  print(format_report(report))
  if FLAGS.json:
    cli.call(_write_json, FLAGS.json, report)


def _write_json(path: str, report: dict):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)

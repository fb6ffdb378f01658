"""A model's measured cost: MACs, parameters, inference latency and memory, the training step's
speed and MFU, and AK-Net's time per piece (its own methods, each jitted alone).

A model is `(config, kind)` as `models.build` takes it. MACs are XLA's cost analysis of one clip's
jitted inference (flops / 2, the paper's "GFLOPs"). Models timed together run in interleaved
rounds, so load from other processes falls on all alike; ratios are also taken round by round.
"""

from __future__ import annotations

import functools
import statistics

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aknet_jax import models
from aknet_jax.models import AKNet
from aknet_jax.timing import latency_stats, peak_tflops, random_variables, time_interleaved
from aknet_jax.train import optim, step as steps


def model_name(config: ml_collections.ConfigDict, kind: str) -> str:
  """'TSM' for the baseline, 'AK-Net-TSM (res4, alpha 0.3, full, stride same)' for AK-Net."""
  base = models.display_name(config.model.backbone)
  if kind != "aknet":
    return base
  a = config.model.aknet
  return f"AK-Net-{base} ({a.split}, alpha {a.alpha:g}, {a.transform_mode}, stride {a.point_stride})"


def inference_fn(config: ml_collections.ConfigDict, kind: str):
  """The jitted inference of `models.build(config, kind)`: (variables, frames) -> logits."""
  model = models.build(config, kind)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def random_frames(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> jax.Array:
  """A batch of N(0, 1) clips of the config's input shape."""
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


def static_cost(config: ml_collections.ConfigDict, kind: str, shapes: dict | None = None) -> dict:
  """{gmacs, params, params_inference} of a model, from its traced shapes (nothing allocated)."""
  shapes = models.variable_shapes(config, kind) if shapes is None else shapes
  return {"gmacs": models.gmacs(config, kind, shapes=shapes),
          "params": models.param_count(config, kind, shapes=shapes),
          "params_inference": models.param_count(config, kind, inference=True, shapes=shapes)}


def profile_inference(specs: list[tuple], batch: int, *, reps: int = 5, warmup: int = 1,
                      variables: list | None = None) -> list[dict]:
  """One entry per (config, kind): name, gmacs, params, latency_ms, clips_per_s, batch, memory.

  The models are timed in interleaved rounds. `variables`: per model, else random ones.
  """
  entries, calls = [], {}
  for i, (cfg, kind) in enumerate(specs):
    shapes = models.variable_shapes(cfg, kind)
    v = variables[i] if variables else random_variables(shapes, seed=i)
    frames = random_frames(cfg, batch)
    compiled = inference_fn(cfg, kind).lower(v, frames).compile()
    calls[i] = (lambda c=compiled, v=v, x=frames: c(v, x))
    cost = static_cost(cfg, kind, shapes)
    entries.append({"name": model_name(cfg, kind), "batch": batch, "gmacs": cost["gmacs"],
                    "params": cost["params_inference"], "memory": _memory(compiled)})
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


def train_step_program(config: ml_collections.ConfigDict, kind: str, batch: int,
                       variables: dict | None = None):
  """(p_step, state, batch_arrays, step): the pmapped training step (one device, state donated),
  its replicated state, a fixed batch of random clips, and the step function itself."""
  device = jax.local_devices()[:1]
  if variables is None:
    variables = random_variables(models.variable_shapes(config, kind))
  model = models.build(config, kind, bn_axis_name=steps.AXIS)
  tx, schedule = optim.create_optimizer(config, variables["params"], 1000)
  state = flax.jax_utils.replicate(steps.create_state(model, variables, tx), devices=device)
  # Give the state the sharding the step's outputs have (mesh axis 'batch'): otherwise the second
  # step compiles the program again, as jax.pmap keys its cache on the input shardings.
  state = jax.pmap(lambda s: s, axis_name=steps.AXIS, devices=device)(state)
  frames = random_frames(config, batch)[None]
  labels = np.arange(batch, dtype=np.int32)[None] % config.dataset.num_classes
  batch_arrays = {"frames": np.asarray(frames), "label": labels}
  step = functools.partial(steps.train_step, config=config, schedule=schedule)
  p_step = jax.pmap(step, axis_name=steps.AXIS, devices=device, donate_argnums=(0,))
  return p_step, state, batch_arrays, step


def train_step_runner(config: ml_collections.ConfigDict, kind: str, batch: int,
                      variables: dict | None = None):
  """(run, flops): `run()` takes one pmapped training step (one device) on a fixed batch of random
  clips, keeping the state between calls; flops are XLA's count for one step."""
  p_step, state, batch_arrays, step = train_step_program(config, kind, batch, variables)
  compiled = p_step.lower(state, batch_arrays).compile()
  flops = models.hlo_flops(step, state, batch_arrays, axis_name=steps.AXIS)
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch_arrays)
    return metrics

  return run, flops


def profile_train_steps(entries: list[tuple], batch: int, *, reps: int = 3,
                        warmup: int = 1) -> list[dict]:
  """Clips/s of each (config, kind)'s pmapped training step (one device), its flops and, on known
  chips, MFU; the models run in interleaved rounds (one step each per round), so the entries after
  the first also carry `step_ratio_paired`, the median per-round ratio to the first's step."""
  runs, flops = {}, {}
  for i, (config, kind) in enumerate(entries):
    runs[i], flops[i] = train_step_runner(config, kind, batch)
  seconds = time_interleaved(runs, reps, warmup)
  peak = peak_tflops()
  out = []
  for i, (config, kind) in enumerate(entries):
    lat = latency_stats(seconds[i])
    achieved = flops[i] / (lat["median"] / 1e3) / 1e12
    entry = {"name": model_name(config, kind), "batch": batch, "step_ms": lat,
             "samples_ms": [1e3 * t for t in seconds[i]],
             "clips_per_s": batch / (lat["median"] / 1e3),
             "tflops_per_step": flops[i] / 1e12, "tflops_per_s": achieved,
             "bf16": bool(config.half_precision),
             "mfu": achieved / peak if peak and config.half_precision else None}
    if i:
      entry["step_ratio_paired"] = statistics.median(
          a / b for a, b in zip(seconds[i], seconds[0]))
    out.append(entry)
  return out


def aknet_parts(config: ml_collections.ConfigDict, variables: dict, batch: int, *,
                reps: int = 5, warmup: int = 1, baseline: tuple | None = None) -> dict:
  """Median ms and GMACs per clip of each piece of AK-Net's inference, each its own method jitted
  alone and fed the previous piece's output: F up to the split; heatmap + top-k + gather +
  ranking + coordinates; the transform net T; the point sub-net Q; pooling + the head. 'whole'
  is the full jitted model. `baseline`: (config, kind, variables) of the stage-1 model, timed in
  the same rounds; then 'shares' gives each piece's time and MACs as fractions of the baseline's
  (time: median of per-round ratios), with the baseline after the split (its stages past F and
  its head: what AK-Net replaces) by difference. A piece whose time share exceeds its MACs share
  runs slower per MAC than the baseline as a whole.

  Returns {'ms', 'gmacs', 'shares' (with a baseline), 'logits_rel_diff': max |chained - whole| /
  max |whole|}.
  """
  model = models.build(config, "aknet")

  def method(fn):
    return lambda v, *args: model.apply(v, *args, method=fn)

  applies = {"F": method(AKNet.features), "select": method(AKNet.select_keypoints),
             "T": method(AKNet.transform_points), "Q": method(AKNet.point_features),
             "head": method(AKNet.classify)}
  fns = {k: jax.jit(f) for k, f in applies.items()}
  frames = random_frames(config, batch)
  x = fns["F"](variables, frames)
  pts, coords, _, _ = fns["select"](variables, x)
  pt = fns["T"](variables, pts, coords)
  q = fns["Q"](variables, pt)
  whole = inference_fn(config, "aknet")
  reference = whole(variables, frames)
  diff = float(jnp.max(jnp.abs(fns["head"](variables, x, q) - reference))
               / jnp.max(jnp.abs(reference)))
  names = {"F": "F (backbone to split; the baseline runs the same)",
           "select": "heatmap + top-k + gather + rank", "T": "transform T",
           "Q": "point sub-net Q", "head": "pool + head"}
  args = {"F": (frames,), "select": (x,), "T": (pts, coords), "Q": (pt,), "head": (x, q)}
  calls = {names[k]: functools.partial(fns[k], variables, *args[k]) for k in names}
  calls["whole (one program)"] = functools.partial(whole, variables, frames)
  # Per clip, counted as models.gmacs counts a model (direct-form convolutions, XLA's analysis).
  # (Unjitted: a cached trace would keep the timed program's Winograd form.)
  gmacs = {names[k]: models.hlo_flops(applies[k], variables, *args[k]) / 2e9 / batch
           for k in names}
  gmacs["whole (one program)"] = models.gmacs(config, "aknet")
  base_name = None
  if baseline is not None:
    base_cfg, base_kind, base_vars = baseline
    base_fn = inference_fn(base_cfg, base_kind)
    base_name = f"baseline {model_name(base_cfg, base_kind)} (whole)"
    calls[base_name] = functools.partial(base_fn, base_vars, frames)
    gmacs[base_name] = models.gmacs(base_cfg, base_kind)
  times = time_interleaved(calls, reps, warmup)
  out = {"ms": {name: latency_stats(s)["median"] for name, s in times.items()},
         "gmacs": gmacs, "logits_rel_diff": diff}
  if base_name is not None:
    base_t, base_g = times[base_name], gmacs[base_name]
    share = lambda ts: statistics.median(t / b for t, b in zip(ts, base_t))  # noqa: E731
    out["shares"] = {name: {"time": share(times[name]), "macs": gmacs[name] / base_g}
                     for name in list(names.values()) + ["whole (one program)"]}
    f_times = times[names["F"]]
    out["shares"]["baseline after the split (its time and MACs minus F's)"] = {
        "time": share([b - f for b, f in zip(base_t, f_times)]),
        "macs": 1.0 - gmacs[names["F"]] / base_g}
  return out

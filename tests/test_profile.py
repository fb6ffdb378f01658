"""The profile CLI's JSON report, interleaved timing, random weights, AK-Net's parts."""

import json
import math
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import cost, models, timing
from conftest import ROOT, load_config


def test_reports_name_each_backbone_as_its_paper_writes_it():
  """Model names in reports and logs: the backbone field upper-cased, but TAda2D as written."""
  names = {b: cost.model_name(load_config("ssv2", f"backbone={b},stage=2"), "aknet")
           for b in ("tsm", "tea", "tada2d")}
  assert names["tada2d"] == "AK-Net-TAda2D (res4, alpha 0.3, none, stride squared)"
  assert names["tsm"].startswith("AK-Net-TSM (") and names["tea"].startswith("AK-Net-TEA (")
  assert cost.model_name(load_config("ssv2", "backbone=tada2d"), "video_net") == "TAda2D"


def test_cli_writes_the_json_report_with_both_models_per_batch(tmp_path):
  out = tmp_path / "profile.json"
  cmd = [sys.executable, "-m", "aknet_jax.profile", "--config=configs/synthetic.py:tiny",
         "--batch=2", "--reps=2", "--train_batch=0", f"--json={out}"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(out.read_text())
  assert isinstance(report["device"], str) and report["device"].startswith("cpu")
  cfg = load_config("synthetic", "tiny")
  base, ak = (cost.model_name(cfg, kind) for kind in ("video_net", "aknet"))
  assert base == "TSM" and ak.startswith("AK-Net-TSM (")
  assert [(m["name"], m["batch"]) for m in report["models"]] == [(base, 2), (ak, 2)]
  for m in report["models"]:
    assert set(m) >= {"name", "gmacs", "params", "latency_ms", "clips_per_s", "batch"}
    lat = m["latency_ms"]
    assert set(lat) == {"median", "min", "max"} and 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert math.isclose(m["clips_per_s"], m["batch"] / lat["median"] * 1e3, rel_tol=1e-9)
    kind = "video_net" if m["name"] == base else "aknet"
    assert math.isclose(m["gmacs"], models.gmacs(cfg, kind), rel_tol=1e-9)
    assert m["params"] == models.param_count(cfg, kind, inference=True)
    # Weights (float32) and the input clip are the compiled call's arguments.
    frames = m["batch"] * math.prod(models.input_shape(cfg)[1:]) * 4
    assert m["memory"]["arguments_bytes"] >= 4 * m["params"] + frames
  (ratio,) = report["ratios"]
  by_name = {m["name"]: m for m in report["models"]}
  assert ratio["model"] == ak
  assert math.isclose(ratio["macs_ratio"], by_name[ak]["gmacs"] / by_name[base]["gmacs"])
  per_round = [a / b for a, b in zip(by_name[ak]["samples_ms"], by_name[base]["samples_ms"])]
  assert len(per_round) == 2 and math.isclose(ratio["latency_ratio_paired"], np.median(per_round))
  assert report["train"] == []  # --train_batch=0.
  assert "| TSM | 2 |" in res.stdout and "latency ratio" in res.stdout


def test_fresh_processes_report_each_ones_paired_ratios_and_their_median(tmp_path):
  """--processes=2: two child runs, each row's paired ratio per process and the median."""
  out = tmp_path / "combined.json"
  cmd = [sys.executable, "-m", "aknet_jax.profile", "--config=configs/synthetic.py:tiny",
         "--batch=2", "--reps=2", "--train_batch=0", "--processes=2", f"--json={out}"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  combined = json.loads(out.read_text())
  assert len(combined["processes"]) == 2 and combined["train"] == []
  (row,) = combined["inference"]
  per_process = [p["ratios"][0]["latency_ratio_paired"] for p in combined["processes"]]
  assert row["paired"] == per_process and row["batch"] == 2
  assert math.isclose(row["median"], float(np.median(per_process)))
  assert all(isinstance(p["load_average"][0], float) for p in combined["processes"])
  assert "in 2 fresh processes" in res.stdout and f"**{row['median']:.3f}**" in res.stdout
  # Each child printed its own tables first.
  assert res.stdout.count("Ratios to the baseline (paired") == 2
  from aknet_jax import profile  # pylint: disable=g-import-not-at-top
  combined["processes"][1]["ratios"] = []
  with pytest.raises(ValueError, match="time different things"):
    profile.combine(combined["processes"])


def test_train_step_throughput_entries_in_interleaved_rounds():
  cfg = load_config("synthetic", "tiny,backbone=tsn")
  ak = load_config("synthetic", "tiny,backbone=tsn,stage=2")
  entry, ak_entry = cost.profile_train_steps([(cfg, "video_net"), (ak, "aknet")], 2, reps=2)
  assert entry["name"] == "TSN" and ak_entry["name"].startswith("AK-Net-TSN")
  assert "step_ratio_paired" not in entry
  per_round = [a / b for a, b in zip(ak_entry["samples_ms"], entry["samples_ms"])]
  assert len(per_round) == 2 and math.isclose(ak_entry["step_ratio_paired"], np.median(per_round))
  assert entry["batch"] == 2 and entry["bf16"] is False and entry["mfu"] is None  # CPU: no peak.
  lat = entry["step_ms"]
  assert 0 < lat["min"] <= lat["median"] <= lat["max"]
  # No compilation inside the timed steps: they take milliseconds, not the seconds of a compile.
  assert lat["max"] < 1000
  assert math.isclose(entry["clips_per_s"], 2 / lat["median"] * 1e3)
  # The step's flops: forward + backward of 2 clips, at least twice the inference MACs x 2 clips.
  assert entry["tflops_per_step"] * 1e12 > 2 * 2 * 2 * models.gmacs(cfg, "video_net") * 1e9


def test_interleaved_timing_runs_every_function_each_round():
  order = []

  def make(name, seconds):
    def fn():
      order.append(name)
      time.sleep(seconds)
      return np.zeros(())
    return fn

  times = timing.time_interleaved({"slow": make("slow", 0.02), "fast": make("fast", 0.002)},
                                   reps=3, warmup=1)
  assert order == ["slow", "fast"] * 4
  assert len(times["slow"]) == len(times["fast"]) == 3
  assert min(times["slow"]) >= 0.02 and np.median(times["fast"]) < np.median(times["slow"])
  stats = timing.latency_stats([0.003, 0.001, 0.002])
  assert stats == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_random_variables_have_the_structure_and_he_scale_of_the_model():
  cfg = load_config("synthetic", "tiny")
  shapes = models.variable_shapes(cfg, "aknet")
  variables = timing.random_variables(shapes)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      jax.tree_util.tree_map(lambda s: 0, shapes))
  kernel = np.asarray(variables["params"]["head"]["kernel"])
  assert kernel.shape == shapes["params"]["head"]["kernel"].shape
  assert abs(kernel.std() / math.sqrt(2 / kernel.shape[0]) - 1) < 0.1
  bn = variables["batch_stats"]["points"]
  assert all(np.all(np.asarray(v) == 1) for v in jax.tree_util.tree_leaves(
      jax.tree_util.tree_map_with_path(lambda p, x: x if p[-1].key == "var" else 1, bn)))


def test_aknet_pieces_chained_reproduce_the_whole_model():
  cfg = load_config("synthetic", "tiny,transform=full")
  # He-scaled random weights everywhere (also in T's last layer): a wrong piece shows in the logits.
  variables = timing.random_variables(models.variable_shapes(cfg, "aknet"))
  base_cfg = load_config("synthetic", "tiny,stage=1")
  base_vars = timing.random_variables(models.variable_shapes(base_cfg, "video_net"), seed=1)
  parts = cost.aknet_parts(cfg, variables, 2, reps=1, warmup=0,
                           baseline=(base_cfg, "video_net", base_vars))
  assert parts["logits_rel_diff"] < 1e-4
  assert len(parts["ms"]) == 7 and all(v > 0 for v in parts["ms"].values())
  # The pieces' MACs per clip add up to the whole model's, and F is the baseline's up to the split.
  gmacs = dict(parts["gmacs"])
  whole = gmacs.pop("whole (one program)")
  base = gmacs.pop(next(k for k in gmacs if k.startswith("baseline ")))
  assert math.isclose(sum(gmacs.values()), whole, rel_tol=1e-3)
  assert whole == models.gmacs(cfg, "aknet") and base == models.gmacs(base_cfg, "video_net")
  f = next(v for k, v in gmacs.items() if k.startswith("F "))
  assert 0 < f < min(whole, base)
  shares = parts["shares"]
  rest = shares["baseline after the split (its time and MACs minus F's)"]
  f_share = next(v for k, v in shares.items() if k.startswith("F "))
  assert math.isclose(rest["macs"] + f_share["macs"], 1.0)
  assert math.isclose(shares["whole (one program)"]["macs"], whole / base)
  from aknet_jax import profile  # pylint: disable=g-import-not-at-top
  table = profile.format_report({"device": "cpu", "models": [], "ratios": [], "train": [],
                                 "parts": {"AK-Net-TSM, batch 2": parts}})
  assert "| baseline after the split (its time and MACs minus F's) | — |" in table


def test_op_profile_attributes_the_step_to_its_ops():
  """`profile --ops`: every timed op is named in the compiled module, and a ResNet step's time
  is mostly convolutions, matmuls (the 1x1 convs) and their elementwise neighbours."""
  from aknet_jax import op_profile  # pylint: disable=g-import-not-at-top
  cfg = load_config("synthetic", "tiny,stage=1")
  report = op_profile.profile_train_ops(cfg, "video_net", 2, top=5)
  kinds = dict(report["by_kind"])
  assert {"convolution", "dot"} <= set(kinds)
  assert math.isclose(sum(kinds.values()), report["total_ms"], rel_tol=1e-6)
  assert len(report["top"]) == 5 and report["top"][0][3] >= report["top"][-1][3] > 0
  table = op_profile.format_train_ops(report)
  assert "| convolution |" in table and "| op | kind |" in table


def test_op_profile_times_an_eigen_convolution_to_its_end(tmp_path):
  """XLA:CPU runs an unfused convolution (here a stride-2 conv's input gradient) on Eigen
  asynchronously; its trace event covers the launch only. The op profile times it to its 'end'
  marker, so the op's time is most of the call's."""
  from aknet_jax import op_profile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 56, 56, 64), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 64, 64), np.float32))
  g = jnp.asarray(rng.standard_normal((8, 28, 28, 64), np.float32))
  conv = lambda x: jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),  # noqa: E731
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  compiled = jax.jit(lambda x, g: jax.vjp(conv, x)[1](g)[0]).lower(x, g).compile()
  names = op_profile.op_kinds(compiled.as_text())
  assert "convolution" in {kind for kind, _ in names.values()}  # Unfused: Eigen's kernel.
  for _ in range(3):
    compiled(x, g).block_until_ready()
  shares, covered = [], []
  for trial in range(5):  # The median call: another test's load can stretch any one of them.
    trace_dir = str(tmp_path / str(trial))
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      compiled(x, g).block_until_ready()
      wall_ns = (time.perf_counter() - start) * 1e9
      time.sleep(op_profile.END_MARKER_WAIT_S)  # As profile_train_ops does.
    times, idle_ns = op_profile._op_times(trace_dir, names)  # pylint: disable=protected-access
    conv_ns = sum(ns for name, ns in times.items() if names[name][0] == "convolution")
    # Wall time shared among the ops running: with the idle time, no more than the call's. Under
    # load one end marker can be recorded late (CI saw 8.9 ms traced in a 6.5 ms call): the median.
    covered.append((sum(times.values()) + idle_ns) / wall_ns)
    shares.append(conv_ns / wall_ns)
  assert np.median(covered) <= 1.0, covered
  assert np.median(shares) > 0.6, shares


@pytest.mark.parametrize("phase", ["aknet_parts", "profile_train_steps"])
def test_json_report_is_written_before_the_parts_and_the_training_steps(tmp_path, monkeypatch,
                                                                        phase):
  """A run that dies timing the parts or the training steps (out of host memory: several full
  transforms) keeps its inference figures in the --json file: `on_phase` writes them first."""
  from aknet_jax import profile, workdir
  out = tmp_path / "profile.json"

  def killed(*args, **kwargs):
    raise MemoryError(f"killed in {phase}")

  monkeypatch.setattr(profile, phase, killed)
  cfg = load_config("synthetic", "tiny")
  with pytest.raises(MemoryError):
    profile.run(cfg, [2], reps=1, warmup=0, train_batch=2, train_reps=1, parts=True,
                on_phase=lambda r: workdir.write_json(str(out), r))
  report = json.loads(out.read_text())
  assert [m["batch"] for m in report["models"]] == [2, 2] and report["train"] == []
  assert report["ratios"][0]["model"].startswith("AK-Net-TSM (")

"""The ablation tool end to end on the tiny config: stage 1 once per seed, rows from it, the CSV,
the table, the plot, a rerun that trains nothing, and a bad row name in one line."""

import csv
import os
import subprocess
import sys

from PIL import Image
import pytest

from aknet_jax import ablate, experiments
from aknet_jax.train import stages
from conftest import ROOT, load_config


@pytest.mark.slow
def test_rows_by_seeds_table_resume_and_bad_row(tiny_data_dir, tmp_path, monkeypatch):
  cfg = load_config("synthetic", f"tiny,data_dir={tiny_data_dir}")
  trained = []
  real = stages.train_and_evaluate

  def counted(config, workdir):
    trained.append((str(config.stage), os.path.relpath(workdir, tmp_path)))
    return real(config, workdir)

  monkeypatch.setattr(stages, "train_and_evaluate", counted)
  measured = []
  real_costs = experiments.measure_costs
  monkeypatch.setattr(experiments, "measure_costs",
                      lambda *a, **kw: measured.append(real_costs(*a, **kw)) or measured[-1])
  kwargs = dict(rows=["no_global"], seeds=2, latency_reps=1)  # Two trainings fewer than 2 rows.
  ablate.run_ablation(cfg, str(tmp_path), **kwargs)
  # Every seed's stage 1, then row by row (in ROWS order, whatever was asked) each seed's stage 2.
  runs = os.path.join("ablation", "runs")
  assert trained == [(stage, os.path.join(runs, d)) for stage, d in
                     [("1", "seed0"), ("1", "seed1"), ("2", "seed0/no_global"),
                      ("2", "seed1/no_global")]]

  out = tmp_path / "ablation"
  with open(out / "ablation.csv", newline="") as f:
    lines = list(csv.DictReader(f))
  assert list(lines[0]) == list(ablate.COLUMNS)
  assert [(r["row"], r["seed"]) for r in lines] == [
      (row, s) for row in ("baseline", "no_global") for s in ("0", "1")]
  for r in lines:
    assert 0 <= float(r["top1"]) <= 1 and float(r["gmacs"]) > 0 and float(r["latency_ms"]) > 0
    assert r["steps"] == "4" and r["train_seed"] == r["seed"]
    if r["row"] == "baseline":
      assert r["keypoint_precision"] == "" and r["model"] == "video_net"
    else:
      assert float(r["keypoint_chance"]) > 0 and float(r["keypoint_frame_cv"]) >= 0
  assert next(r for r in lines if r["row"] == "no_global")["overrides"] == (
      "model.aknet.concat_global=False")
  table = (out / "ablation.md").read_text().splitlines()
  body = [ln for ln in table if ln.startswith("| ") and not ln.startswith("| row")]
  assert [ln.split("|")[1].strip() for ln in body] == ["baseline", "no_global"]
  assert all(ln.split("|")[2].strip() == "2" for ln in body)  # Seeds per row.
  assert " ± " in body[1] and "load average" in "\n".join(table)
  assert Image.open(out / "ablation.png").size[0] > 300

  # A rerun trains nothing: every (row, seed) has its results (costs reused: not what it tests).
  assert sorted(measured[0]) == ["baseline", "no_global"]
  monkeypatch.setattr(experiments, "measure_costs", lambda *a, **kw: measured[0])
  trained.clear()
  before = {p: os.path.getmtime(p) for p in (tmp_path / runs).glob("seed*/**/results.json")}
  ablate.run_ablation(cfg, str(tmp_path), **kwargs)
  assert trained == []
  assert {p: os.path.getmtime(p) for p in before} == before

  bad = subprocess.run([sys.executable, "-m", "aknet_jax.ablate", "--config=configs/synthetic.py",
                        f"--workdir={tmp_path}", "--rows=full,no_such_row"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
  err = bad.stderr.strip().splitlines()
  assert bad.returncode == 2 and len(err) == 1, bad.stderr
  assert "no_such_row" in err[0] and all(name in err[0] for name in ablate.ROWS)

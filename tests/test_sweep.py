"""The sweep: every point's costs, fine-tunes from one stage-1 checkpoint, the CSV and the plot."""

import csv
import json
import os

import jax
import pytest
from PIL import Image

from aknet_jax import checkpoints, models, sweep
from aknet_jax.checkpoints import architecture
from conftest import load_config


def _rows(workdir):
  with open(os.path.join(workdir, "sweep", "sweep.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_costs_of_every_point_in_the_csv_and_plot(tmp_path):
  cfg = load_config("synthetic", "tiny,transform=none")  # 4 frames, 32²: res4 2x2, res3 4x4.
  sweep.run_sweep(cfg, str(tmp_path), accuracy="none", batch=1, reps=1, splits=("res4", "res3"),
                  alphas=(0.5, 1.0), modes=("lowrank", "none"))
  rows = _rows(tmp_path)
  assert list(rows[0]) == list(sweep.COLUMNS)
  assert [r["model"] for r in rows] == ["baseline"] + ["aknet"] * 8
  by_name = {r["name"]: r for r in rows}
  for split, cells in (("res4", 4 * 2 * 2), ("res3", 4 * 4 * 4)):
    for alpha in (0.5, 1.0):
      for mode in ("lowrank", "none"):
        r = by_name[sweep.point_name(split, alpha, mode)]
        assert int(r["num_points"]) == round(alpha * cells)
        assert float(r["latency_ms"]) > 0 and r["top1"] == ""
    # More points cost more; the transform net costs MACs and parameters.
    none = [float(by_name[sweep.point_name(split, a, "none")]["gmacs"]) for a in (0.5, 1.0)]
    assert none[0] < none[1]
    low = by_name[sweep.point_name(split, 1.0, "lowrank")]
    non = by_name[sweep.point_name(split, 1.0, "none")]
    assert float(low["gmacs"]) > float(non["gmacs"])
    assert int(low["params_inference"]) > int(non["params_inference"])
  point = sweep.point_config(cfg, "res3", 0.5, "none")
  assert float(by_name["res3_a0.5_none"]["gmacs"]) == pytest.approx(models.gmacs(point, "aknet"))
  assert Image.open(tmp_path / "sweep" / "sweep.png").size[0] > 500


def test_both_point_strides_in_one_sweep(tmp_path):
  """`--point_strides=same,squared`: every point once per stride (names carry it), and the
  squared stride, which cuts the points by 4 at each strided block of Q, costs fewer MACs."""
  cfg = load_config("synthetic", "tiny,transform=none")
  sweep.run_sweep(cfg, str(tmp_path), accuracy="none", batch=1, reps=1, splits=("res3",),
                  alphas=(1.0,), modes=("none",), strides=["same", "squared"])
  rows = {r["name"]: r for r in _rows(tmp_path)}
  same, squared = rows["res3_a1_none_same"], rows["res3_a1_none_squared"]
  assert (same["point_stride"], squared["point_stride"]) == ("same", "squared")
  assert float(squared["gmacs"]) < float(same["gmacs"])
  assert float(squared["gmacs"]) == pytest.approx(
      models.gmacs(sweep.point_config(cfg, "res3", 1.0, "none", "squared"), "aknet"))
  assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
  with pytest.raises(ValueError, match="--point_strides"):
    sweep.run_sweep(cfg, str(tmp_path), accuracy="none", strides=["halved"])


def test_accuracy_from_a_fine_tune_of_the_shared_stage1_checkpoint(tiny_data_dir, tmp_path,
                                                                  monkeypatch):
  cfg = load_config("synthetic", f"tiny,transform=none,data_dir={tiny_data_dir}")
  variables = models.init_variables(cfg, "video_net", jax.random.PRNGKey(0))
  checkpoints.write_variables(str(tmp_path / "stage1" / "checkpoints"), 4, variables,
                              {"architecture": architecture.record(cfg, "video_net"), "step": 4})
  (tmp_path / "results.json").write_text(json.dumps({"stage1": {"top1": 0.25, "top5": 0.75}}))
  kwargs = dict(accuracy="config", steps=2, batch=1, reps=1, splits=("res4",), alphas=(1.0,),
                modes=("lowrank", "none"))
  sweep.run_sweep(cfg, str(tmp_path), **kwargs)
  rows = {r["name"]: r for r in _rows(tmp_path)}
  assert rows["TSM"]["top1"] == "0.25"
  trained = rows["res4_a1_none"]
  assert 0 <= float(trained["top1"]) <= 1 and float(trained["keypoint_chance"]) > 0
  assert trained["finetune_steps"] == "2"
  assert rows["res4_a1_lowrank"]["top1"] == ""  # Only the config's transform mode.
  with open(tmp_path / "sweep" / "runs" / "res4_a1_none" / "results.json") as f:
    assert json.load(f)["stage2"]["step"] == 2

  def no_training(*args, **kw):
    raise AssertionError("a finished point was fine-tuned again")

  monkeypatch.setattr(sweep, "finetune", no_training)
  sweep.run_sweep(cfg, str(tmp_path), **kwargs)  # A rerun reuses the finished point.
  assert _rows(tmp_path)[2]["top1"] == trained["top1"]


def test_accuracy_order_covers_every_split_first_and_bad_choices_fail():
  rows = [{"split": s, "alpha": a, "transform_mode": "lowrank"}
          for s in ("res2", "res3", "res4") for a in sweep.ALPHAS]
  order = [(r["split"], r["alpha"]) for r in sweep.accuracy_order(rows, 0.3)]
  assert order[:9] == [(s, a) for s in ("res2", "res3", "res4") for a in (0.1, 0.3, 1.0)]
  assert sorted(order) == sorted((r["split"], r["alpha"]) for r in rows)
  with pytest.raises(ValueError, match="--accuracy"):
    sweep.run_sweep(load_config("synthetic", "tiny"), "/nonexistent", accuracy="some")

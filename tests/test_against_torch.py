"""`profile --against=torch`: the PyTorch reference and our model get the same weights and are
timed in the same rounds (tiny shapes here; the figures come from the ResNet-50 runs)."""

import pytest

from conftest import load_config

pytest.importorskip("torch")
# pylint: disable=g-import-not-at-top,wrong-import-position
from aknet_jax import against_torch  # noqa: E402


def test_same_weights_same_logits_and_per_round_ratios():
  cfg = load_config("synthetic", "tiny,width=64,segments=2,backbone=tsm")
  report = against_torch.compare(cfg, [1, 2], train_batch=2, reps=2, warmup=1, train_warmup=2)
  assert [r["batch"] for r in report["inference"]] == [1, 2]
  assert report["train"]["warmup_rounds"] == 2
  for r in report["inference"] + [report["train"]]:
    assert len(r["ratios"]) == 2 and all(x > 0 for x in r["ratios"])
    assert min(r["ratios"]) <= r["ratio_median"] <= max(r["ratios"])
  # Independent check of the weight mapping: torch's logits from the same state dict.
  assert max(r["max_abs_logit_diff"] for r in report["inference"]) < 1e-4
  env = report["environment"]
  assert env["torch_threads"] >= 1 and len(env["load_average"]) == 3
  assert env["host_malloc"]  # Both sides share the process's allocator: the report says which.
  text = against_torch.format_report(report)
  assert "| training step | 2 |" in text and "load average" in text
  assert "Training step (2 untimed rounds first)" in text
  assert f"both sides (one process) with {env['host_malloc']}" in text


def test_stage_2_also_times_aknets_step_against_the_torch_baseline():
  cfg = load_config("synthetic", "tiny,width=64,segments=2,backbone=tsm,stage=2")
  report = against_torch.compare(cfg, [1], train_batch=2, reps=2, warmup=1)
  ak = report["train"]["aknet"]
  assert ak["name"].startswith("AK-Net-TSM") and len(ak["ratios"]) == 2
  assert min(ak["ratios"]) <= ak["ratio_median"] <= max(ak["ratios"])
  assert f"{ak['name']} (JAX) training step / the torch baseline's" in (
      against_torch.format_report(report))


def test_tdn_same_weights_same_logits():
  """TDN-R50 (the reference's TDNNet, width 8: no torchvision net to match) on 2 x 5 frames of
  64 px, the smallest config image size TDN runs at; T = 2 takes the asymmetric fusion weights."""
  cfg = load_config("synthetic", "tiny,width=8,segments=2,depth=50,backbone=tdn,image_size=64")
  assert cfg.dataset.frames_per_segment == 5
  # Inference only: the training step's timing path is TSM's above (TDN's compile costs ~100 s).
  report = against_torch.compare(cfg, [1], train_batch=0, reps=1, warmup=1)
  assert report["config"]["backbone"] == "tdn" and [r["batch"] for r in report["inference"]] == [1]
  assert report["train"] is None
  for r in report["inference"]:
    assert len(r["ratios"]) == 1 and r["ratios"][0] > 0
    assert r["jax_ms"]["median"] > 0 and r["torch_ms"]["median"] > 0
  assert report["inference"][0]["max_abs_logit_diff"] < 1e-4
  assert "| inference | 1 |" in against_torch.format_report(report)


def test_only_torchvision_shaped_tsn_and_tsm():
  with pytest.raises(ValueError, match="model.width=8"):
    against_torch.compare(load_config("synthetic", "tiny"), [1], train_batch=0, reps=1)


def test_bf16_runs_torch_under_autocast_and_agrees_to_bf16_precision():
  """With half_precision, JAX computes in bf16 and torch under bf16 autocast: the logits agree to
  bf16's precision (not fp32's), and the training step reports both sides' TFLOP/s."""
  cfg = load_config("synthetic", "tiny,width=64,segments=2,backbone=tsm,bf16=true")
  report = against_torch.compare(cfg, [1], train_batch=2, reps=1, warmup=1)
  assert report["config"]["bf16"]
  rel = report["inference"][0]["max_rel_logit_diff"]
  assert 1e-6 < rel < 5e-2  # bf16 keeps 8 bits of mantissa: far from fp32's 1e-7, not garbage.
  t = report["train"]
  assert t["tflops_per_step"] > 0 and t["jax_tflops_per_s"] > 0 and t["torch_tflops_per_s"] > 0
  assert "bf16 (JAX bf16 compute, torch autocast)" in against_torch.format_report(report)


def _fake_report(inference, train, aknet, load):
  """The fields of a `compare` report that `combine` reads."""
  return {"environment": {"load_average": [load, 0.0, 0.0]},
          "inference": [{"batch": b, "ratio_median": r} for b, r in inference],
          "train": {"batch": 2, "ratio_median": train,
                    "aknet": {"name": "AK-Net-TSM (x)", "ratio_median": aknet}}}


def test_combine_reports_each_processs_median_ratios_and_their_median():
  reports = [_fake_report([(1, 0.9), (8, 1.0)], 1.09, 0.98, 0.5),
             _fake_report([(1, 1.1), (8, 0.8)], 0.94, 1.00, 1.5),
             _fake_report([(1, 1.0), (8, 0.9)], 0.97, 1.30, 1.7)]
  combined = against_torch.combine(reports)
  assert combined["ratios"]["inference, batch 1"] == [0.9, 1.1, 1.0]
  assert combined["median"] == {"inference, batch 1": 1.0, "inference, batch 8": 0.9,
                                "training step, batch 2": 0.97,
                                "AK-Net-TSM (x) step / the torch baseline's": 1.00}
  text = against_torch.format_combined(combined)
  assert "in 3 fresh processes" in text and "0.50, 1.50, 1.70" in text
  assert "| training step, batch 2 | 1.09, 0.94, 0.97 | **0.97** |" in text
  reports[1]["train"] = None  # A process that timed no training step.
  with pytest.raises(ValueError, match="time different things"):
    against_torch.combine(reports)


def test_each_fresh_process_gets_the_flags_with_one_process_and_its_own_json():
  from aknet_jax import profile  # pylint: disable=g-import-not-at-top
  argv = ["--config=configs/ssv2.py:backbone=tsm", "--against=torch", "--processes=3",
          "--json", "out.json", "--reps=5", "--processes", "2", "--json=x.json"]
  assert profile.child_argv(argv, "/tmp/p0.json") == [
      "--config=configs/ssv2.py:backbone=tsm", "--against=torch", "--reps=5", "--processes=1",
      "--json=/tmp/p0.json"]

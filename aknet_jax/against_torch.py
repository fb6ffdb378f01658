"""Our TSN / TSM / TDN against the PyTorch reference (`torch_reference`) with the same weights, timed
side by side in one process: inference at each batch size and the training step (forward, CE,
backward, global-norm clip 20, SGD momentum 0.9 with weight decay), in interleaved rounds so that
machine load falls on both alike; ratios JAX / torch are taken round by round.

Both sides get every parameter the same lr and weight decay (TDN's 'uniform' policy; TSM's
per-group multipliers only rescale the update) and no dropout, so they run the same arithmetic.
On a GPU, torch runs on CUDA (cuDNN autotuning on, as the official TSM/TDN training scripts set)
and every torch call ends with a device synchronisation, as every JAX call does. With
`half_precision` the JAX model computes in bf16 and torch runs under bf16 autocast.
"""

from __future__ import annotations

import os
import platform
import statistics

import jax
import ml_collections
import numpy as np

from aknet_jax import cost
from aknet_jax import host_memory
from aknet_jax import models
from aknet_jax.checkpoints import torch_layout
from aknet_jax.timing import (TRAIN_WARMUP, across_processes, device_name, latency_stats,
                              peak_tflops, time_interleaved)


def _torch_model(config: ml_collections.ConfigDict):
  """(torch, the reference model): TSN's consensus around a torchvision ResNet (TSN / TSM, width
  64 only) or around `torch_reference.TDNNet` (TDN, ResNet-50 / 101, any width); seeded weights."""
  from aknet_jax import torch_reference as ref  # pylint: disable=g-import-not-at-top (torch extra)
  m, d = config.model, config.dataset
  if m.backbone == "tdn":
    if m.depth not in ref.TDN_STAGE_SIZES:
      raise ValueError(f"--against=torch compares TDN on ResNet-50 / 101; the config has "
                       f"model.depth={m.depth}")
    net = ref.tdn(m.depth, m.width, d.num_segments, seed=0)
  elif m.backbone in ("tsn", "tsm") and m.width == 64:
    net = ref.resnet(m.depth, seed=0)
    if m.backbone == "tsm":
      net = ref.make_tsm(net, d.num_segments)
  else:
    raise ValueError(f"--against=torch compares TSN / TSM on torchvision ResNets (width 64) and "
                     f"TDN; the config has model.backbone={m.backbone!r}, model.width={m.width}")
  return ref.torch, ref.TSN(net, d.num_segments, d.num_classes)


def _comparable(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  c.model.dropout = 0.0
  c.train.lr_policy = "uniform"
  c.train.optimizer, c.train.momentum, c.train.grad_clip = "sgd", 0.9, 20.0
  c.train.warmup_steps = 0
  return c


def compare(config: ml_collections.ConfigDict, batches: list[int], *, train_batch: int = 2,
            reps: int = 5, warmup: int = 1, train_warmup: int = TRAIN_WARMUP) -> dict:
  """{'inference': [...], 'train': {...}, 'environment': {...}} with per-round ratios."""
  cfg = _comparable(config)
  torch, model = _torch_model(cfg)
  from aknet_jax import torch_reference  # pylint: disable=g-import-not-at-top (imported above)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = jax.device_put(torch_layout.torch_to_variables(
      {f"module.{k}": v for k, v in state.items()}, cfg))
  fn = cost.inference_fn(cfg, "video_net")
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  if device == "cuda":
    torch.backends.cudnn.benchmark = True
  model.to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  bf16 = bool(cfg.half_precision)

  def autocast():
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

  report = {"environment": environment(torch, device), "inference": [], "train": None,
            "config": {"backbone": cfg.model.backbone, "depth": int(cfg.model.depth),
                       "frames": int(cfg.dataset.num_segments),
                       "image_size": int(cfg.dataset.image_size), "bf16": bf16}}

  def torch_input(frames):  # (B, T*L, H, W, 3) -> (B*T, L*3, H, W), as the reference reads them.
    return torch_reference.torch_frames(frames, cfg.dataset.num_segments).to(device)

  model.eval()
  for b in batches:
    frames = cost.random_frames(cfg, b)
    x = torch_input(frames)
    compiled = fn.lower(variables, frames).compile()
    with torch.no_grad(), autocast():
      ours = np.asarray(compiled(variables, frames), np.float32)
      theirs = model(x).float().cpu().numpy()
      diff = float(np.max(np.abs(ours - theirs)))
      rel = diff / max(float(np.max(np.abs(theirs))), 1e-30)

    def torch_infer(x=x):
      with torch.no_grad(), autocast():
        out = model(x)
      sync()
      return out

    times = time_interleaved({"jax": lambda c=compiled, f=frames: c(variables, f),
                              "torch": torch_infer}, reps, warmup)
    report["inference"].append(dict(_ratios(times), batch=b, max_abs_logit_diff=diff,
                                    max_rel_logit_diff=rel))

  if train_batch > 0:
    run_jax, flops = cost.train_step_runner(cfg, "video_net", train_batch, variables)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate, momentum=0.9,
                          weight_decay=cfg.train.weight_decay)
    frames = cost.random_frames(cfg, train_batch)
    x = torch_input(frames)
    y = torch.from_numpy(np.arange(train_batch) % cfg.dataset.num_classes).to(device)

    def torch_step():
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
      opt.step()
      sync()
      return loss

    calls = {"jax": run_jax, "torch": torch_step}
    if str(cfg.stage) == "2":  # Stage 2 also times AK-Net's step (random weights) in the rounds.
      calls["aknet"] = cost.train_step_runner(cfg, "aknet", train_batch)[0]
    times = time_interleaved(calls, reps, train_warmup)
    train = dict(_ratios(times), batch=train_batch, tflops_per_step=flops / 1e12,
                 warmup_rounds=train_warmup)
    if "aknet" in times:
      per_round = [a / t for a, t in zip(times["aknet"], times["torch"])]
      train["aknet"] = {"name": cost.model_name(cfg, "aknet"),
                        "ms": latency_stats(times["aknet"]), "ratios": per_round,
                        "ratio_median": statistics.median(per_round)}
    peak = peak_tflops() if bf16 else None
    for side in ("jax", "torch"):  # Both run the same arithmetic: XLA's count serves for both.
      achieved = flops / (train[f"{side}_ms"]["median"] / 1e3) / 1e12
      train[f"{side}_tflops_per_s"] = achieved
      train[f"{side}_mfu"] = achieved / peak if peak else None
    report["train"] = train
  return report


def combine(reports: list[dict]) -> dict:
  """Several `compare` reports, each from a fresh process, as {label: [each process's median
  ratio]} and their medians: on CPU a process's state moves a ratio by up to 0.1, more than its
  rounds' spread does (docs/benchmarks.md, "ninth session")."""
  def ratios(report):
    out = {f"inference, batch {r['batch']}": r["ratio_median"] for r in report["inference"]}
    t = report["train"]
    if t:
      out[f"training step, batch {t['batch']}"] = t["ratio_median"]
      if t.get("aknet"):
        out[f"{t['aknet']['name']} step / the torch baseline's"] = t["aknet"]["ratio_median"]
    return out

  by_label = across_processes([ratios(r) for r in reports])
  return {"processes": reports, "ratios": by_label,
          "median": {k: statistics.median(v) for k, v in by_label.items()}}


def format_combined(combined: dict) -> str:
  """Markdown of a `combine` result: each process's median ratio and the median across them."""
  loads = ", ".join(f"{r['environment']['load_average'][0]:.2f}" for r in combined["processes"])
  lines = [f"JAX / torch in {len(combined['processes'])} fresh processes, one after another (each "
           f"the median of its rounds; 1-minute load average at their starts: {loads}):", "",
           "| what | per process | median across processes |", "|---|---|---:|"]
  lines += [f"| {k} | {', '.join(f'{x:.2f}' for x in v)} | **{combined['median'][k]:.2f}** |"
            for k, v in combined["ratios"].items()]
  return "\n".join(lines)


def _ratios(times: dict) -> dict:
  per_round = [j / t for j, t in zip(times["jax"], times["torch"])]
  return {"jax_ms": latency_stats(times["jax"]), "torch_ms": latency_stats(times["torch"]),
          "ratios": per_round, "ratio_median": statistics.median(per_round)}


def environment(torch, device: str = "cpu") -> dict:
  """What the figures depend on: machine, load, threads, versions, XLA flags."""
  return {"device": device_name(), "torch_device": (torch.cuda.get_device_name() if device == "cuda"
                                                    else "cpu"),
          "load_average": os.getloadavg(),
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
          "jax": jax.__version__, "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
          "jax_devices": len(jax.devices()), "host_malloc": host_memory.describe()}


def format_report(report: dict) -> str:
  """Markdown of a `compare` report."""
  env = report["environment"]
  c = report["config"]
  name = models.display_name(c["backbone"])
  lines = [f"{name} ResNet-{c['depth']}, {c['frames']} x {c['image_size']}², "
           f"{'bf16 (JAX bf16 compute, torch autocast)' if c.get('bf16') else 'fp32'}; "
           f"{env['device']}; torch on {env.get('torch_device', 'cpu')}; load average "
           f"{', '.join(f'{x:.2f}' for x in env['load_average'])} at start; torch {env['torch']} "
           f"({env['torch_threads']} threads), jax {env['jax']}, "
           f"XLA_FLAGS={env['xla_flags'] or '(none)'}; both sides (one process) with "
           f"{env.get('host_malloc', 'the allocator defaults')}.", "",
           "| what | batch | JAX median (ms) | torch median (ms) | JAX / torch, median of rounds | "
           "per-round ratios |", "|---|---:|---:|---:|---:|---|"]
  rows = [("inference", r) for r in report["inference"]]
  if report["train"]:
    rows.append(("training step", report["train"]))
  for what, r in rows:
    lines.append(f"| {what} | {r['batch']} | {r['jax_ms']['median']:.4g} | "
                 f"{r['torch_ms']['median']:.4g} | **{r['ratio_median']:.2f}** | "
                 f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |")
  worst = max(report["inference"], key=lambda r: r["max_abs_logit_diff"])
  lines += ["", f"Same weights on both sides: largest |logit difference| "
            f"{worst['max_abs_logit_diff']:.1e} ({worst['max_rel_logit_diff']:.1e} of the largest "
            f"|logit|)."]
  t = report["train"]
  if t:
    mfu = lambda side: (f", MFU {100 * t[f'{side}_mfu']:.1f} %"  # noqa: E731
                        if t.get(f"{side}_mfu") is not None else "")
    lines.append(f"Training step ({t.get('warmup_rounds', 1)} untimed rounds first): "
                 f"{t['tflops_per_step']:.3g} TFLOP (XLA's HLO count); JAX "
                 f"{t['batch'] / t['jax_ms']['median'] * 1e3:.1f} clips/s, "
                 f"{t['jax_tflops_per_s']:.3g} TFLOP/s{mfu('jax')}; torch "
                 f"{t['batch'] / t['torch_ms']['median'] * 1e3:.1f} clips/s, "
                 f"{t['torch_tflops_per_s']:.3g} TFLOP/s{mfu('torch')}.")
    ak = t.get("aknet")
    if ak:
      lines.append(f"{ak['name']} (JAX) training step / the torch baseline's, same rounds: "
                   f"**{ak['ratio_median']:.2f}** ({ak['ms']['median']:.4g} ms; per round "
                   f"{', '.join(f'{x:.2f}' for x in ak['ratios'])}).")
  return "\n".join(lines)

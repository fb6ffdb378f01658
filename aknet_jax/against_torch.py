"""Our TSN / TSM / TDN against the PyTorch reference (`torch_reference`) with the same weights, timed
side by side in one process: inference at each batch size and the training step (forward, CE,
backward, global-norm clip 20, SGD momentum 0.9 with weight decay), in interleaved rounds so that
machine load falls on both alike; ratios JAX / torch are taken round by round.

Both sides get every parameter the same lr and weight decay (TDN's 'uniform' policy; TSM's
per-group multipliers only rescale the update) and no dropout, so they run the same arithmetic.
"""

from __future__ import annotations

import os
import platform
import statistics

import jax
import ml_collections
import numpy as np

from aknet_jax import cost
from aknet_jax.checkpoints import torch_layout
from aknet_jax.timing import device_name, latency_stats, time_interleaved


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
            reps: int = 5, warmup: int = 1) -> dict:
  """{'inference': [...], 'train': {...}, 'environment': {...}} with per-round ratios."""
  cfg = _comparable(config)
  torch, model = _torch_model(cfg)
  from aknet_jax import torch_reference  # pylint: disable=g-import-not-at-top (imported above)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = jax.device_put(torch_layout.torch_to_variables(
      {f"module.{k}": v for k, v in state.items()}, cfg))
  fn = cost.inference_fn(cfg, "video_net")
  report = {"environment": environment(torch), "inference": [], "train": None,
            "config": {"backbone": cfg.model.backbone, "depth": int(cfg.model.depth),
                       "frames": int(cfg.dataset.num_segments),
                       "image_size": int(cfg.dataset.image_size)}}

  def torch_input(frames):  # (B, T*L, H, W, 3) -> (B*T, L*3, H, W), as the reference reads them.
    return torch_reference.torch_frames(frames, cfg.dataset.num_segments)

  model.eval()
  for b in batches:
    frames = cost.random_frames(cfg, b)
    x = torch_input(frames)
    compiled = fn.lower(variables, frames).compile()
    with torch.no_grad():
      diff = float(np.max(np.abs(np.asarray(compiled(variables, frames)) - model(x).numpy())))

    def torch_infer(x=x):
      with torch.no_grad():
        return model(x)

    times = time_interleaved({"jax": lambda c=compiled, f=frames: c(variables, f),
                              "torch": torch_infer}, reps, warmup)
    report["inference"].append(dict(_ratios(times), batch=b, max_abs_logit_diff=diff))

  if train_batch > 0:
    run_jax, _ = cost.train_step_runner(cfg, "video_net", train_batch, variables)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate, momentum=0.9,
                          weight_decay=cfg.train.weight_decay)
    frames = cost.random_frames(cfg, train_batch)
    x = torch_input(frames)
    y = torch.from_numpy(np.arange(train_batch) % cfg.dataset.num_classes)

    def torch_step():
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), y)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
      opt.step()
      return loss

    times = time_interleaved({"jax": run_jax, "torch": torch_step}, reps, warmup)
    report["train"] = dict(_ratios(times), batch=train_batch)
  return report


def _ratios(times: dict) -> dict:
  per_round = [j / t for j, t in zip(times["jax"], times["torch"])]
  return {"jax_ms": latency_stats(times["jax"]), "torch_ms": latency_stats(times["torch"]),
          "ratios": per_round, "ratio_median": statistics.median(per_round)}


def environment(torch) -> dict:
  """What the figures depend on: machine, load, threads, versions, XLA flags."""
  return {"device": device_name(), "load_average": os.getloadavg(),
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
          "jax": jax.__version__, "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
          "jax_devices": len(jax.devices())}


def format_report(report: dict) -> str:
  """Markdown of a `compare` report."""
  env = report["environment"]
  c = report["config"]
  lines = [f"{c['backbone'].upper()} ResNet-{c['depth']}, {c['frames']} x {c['image_size']}²; "
           f"{env['device']}; load average {', '.join(f'{x:.2f}' for x in env['load_average'])} "
           f"at start; torch {env['torch']} ({env['torch_threads']} threads), jax {env['jax']}, "
           f"XLA_FLAGS={env['xla_flags'] or '(none)'}.", "",
           "| what | batch | JAX median (ms) | torch median (ms) | JAX / torch, median of rounds | "
           "per-round ratios |", "|---|---:|---:|---:|---:|---|"]
  rows = [("inference", r) for r in report["inference"]]
  if report["train"]:
    rows.append(("training step", report["train"]))
  for what, r in rows:
    lines.append(f"| {what} | {r['batch']} | {r['jax_ms']['median']:.0f} | "
                 f"{r['torch_ms']['median']:.0f} | **{r['ratio_median']:.2f}** | "
                 f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |")
  diffs = [r["max_abs_logit_diff"] for r in report["inference"]]
  lines += ["", f"Same weights on both sides: largest |logit difference| {max(diffs):.1e}."]
  return "\n".join(lines)


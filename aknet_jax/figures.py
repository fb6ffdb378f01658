"""Figures: per-class accuracy bars (the paper's Fig. 4) and the accuracy-cost trade-off (Fig. 5).

Matplotlib with the Agg backend: files only, no display needed.
"""

from __future__ import annotations

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from aknet_jax import workdir as workdir_lib  # noqa: E402

_SPLIT_COLOURS = {"res2": "tab:blue", "res3": "tab:orange", "res4": "tab:green"}
_MODE_MARKERS = {"full": "s", "lowrank": "o", "none": "^"}


def read_per_class(path: str) -> np.ndarray:
  """per_class_accuracy.json ({'<class>': {'accuracy', 'num_examples'}}) -> accuracies (K,).

  Classes without examples are NaN.
  """
  table = workdir_lib.read_json(path, "per_class_accuracy.json")
  try:
    k = 1 + max(int(c) for c in table)
    acc = np.full(k, np.nan)
    for c, entry in table.items():
      if entry.get("accuracy") is not None:
        acc[int(c)] = float(entry["accuracy"])
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise ValueError(f"{path}: not a per_class_accuracy.json written by evaluation "
                     f"({type(e).__name__}: {e})") from None
  return acc


def read_class_names(path: str) -> list[str] | None:
  """The class names a per_class_accuracy.json records (evaluation writes them), else None."""
  table = workdir_lib.read_json(path, "per_class_accuracy.json")
  names = {int(c): e.get("name") for c, e in table.items() if isinstance(e, dict)}
  if not names or any(n is None for n in names.values()):
    return None
  return [names.get(i, f"class {i}") for i in range(1 + max(names))]


def per_class_figure(accuracy: np.ndarray, out_path: str, *, baseline: np.ndarray | None = None,
                     class_names: list[str] | None = None, max_classes: int = 40,
                     labels: tuple[str, str] = ("AK-Net", "baseline")) -> list[int]:
  """Bar chart of per-class top-1 accuracy (%), with a baseline's bars beside it when given.

  Classes are ordered by accuracy, or by the gain over the baseline; beyond `max_classes`, the
  first and last max_classes / 2 of that order are shown. Returns the classes drawn, in order.
  """
  k = len(accuracy)
  if baseline is not None and len(baseline) != k:
    raise ValueError(f"per-class files disagree: {k} classes vs {len(baseline)} in the baseline")
  names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"{len(names)} class names for {k} classes")
  valid = np.flatnonzero(~np.isnan(accuracy))
  key = accuracy - baseline if baseline is not None else accuracy
  order = valid[np.argsort(-np.nan_to_num(key[valid], nan=-np.inf), kind="stable")]
  if len(order) > max_classes:
    order = np.concatenate([order[:max_classes // 2], order[-(max_classes - max_classes // 2):]])
  x = np.arange(len(order))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 2.0), 4.5))
  width = 0.4 if baseline is not None else 0.8
  ax.bar(x - (width / 2 if baseline is not None else 0), 100 * accuracy[order], width,
         label=labels[0], color="tab:red")
  if baseline is not None:
    ax.bar(x + width / 2, 100 * baseline[order], width, label=labels[1], color="tab:gray")
    ax.legend()
  ax.set_xticks(x)
  ax.set_xticklabels([names[i] for i in order], rotation=90, fontsize=7)
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, 105)
  title = "Per-class accuracy"
  if baseline is not None:
    title += f" (ordered by gain over {labels[1]})"
  ax.set_title(title)
  fig.tight_layout()
  _save(fig, out_path)
  return [int(i) for i in order]


def read_sweep(path: str) -> list[dict]:
  """Rows of a sweep CSV, numbers parsed ('' -> None)."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out = []
  for r in rows:
    row = {}
    for k, v in r.items():
      try:
        row[k] = float(v) if v not in ("", None) else None
      except ValueError:
        row[k] = v
    out.append(row)
  return out


def tradeoff_figure(rows: list[dict], out_path: str, title: str = "") -> str:
  """Accuracy vs MACs, accuracy vs latency (points with an accuracy), and latency vs MACs (all).

  rows: sweep rows with model ('baseline' or 'aknet'), split, alpha, transform_mode, gmacs,
  latency_ms, top1 (None where not trained), and point_stride where swept. Lines join the alphas
  of one (split, mode, stride); with two strides, `squared` is dashed with hollow markers.
  """
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
  base = [r for r in rows if r["model"] == "baseline"]
  points = [r for r in rows if r["model"] == "aknet"]
  groups = {}
  for r in points:
    groups.setdefault((r["split"], r["transform_mode"], r.get("point_stride") or ""),
                      []).append(r)
  several_strides = len({stride for _, _, stride in groups}) > 1
  for (split, mode, stride), group in sorted(groups.items()):
    group = sorted(group, key=lambda r: r["alpha"])
    style = dict(color=_SPLIT_COLOURS.get(split, "k"), marker=_MODE_MARKERS.get(mode, "x"))
    label = f"{split}, {mode}" + (f", {stride}" if several_strides else "")
    if several_strides and stride == "squared":
      style.update(linestyle="--", markerfacecolor="none")
    trained = [r for r in group if r.get("top1") is not None]
    for ax, key in ((axes[0], "gmacs"), (axes[1], "latency_ms")):
      if trained:
        ax.plot([r[key] for r in trained], [100 * r["top1"] for r in trained], label=label,
                **style)
        for r in trained:
          ax.annotate(f"{r['alpha']:g}", (r[key], 100 * r["top1"]), fontsize=7,
                      textcoords="offset points", xytext=(3, 3))
    axes[2].plot([r["gmacs"] for r in group], [r["latency_ms"] for r in group], label=label,
                 alpha=0.8, **style)
  for r in base:
    if r.get("top1") is not None:
      for ax, key in ((axes[0], "gmacs"), (axes[1], "latency_ms")):
        ax.plot([r[key]], [100 * r["top1"]], marker="*", markersize=14, color="k", linestyle="",
                label=f"baseline ({r.get('name', '')})")
        ax.axhline(100 * r["top1"], color="k", linewidth=0.6, linestyle=":")
    axes[2].plot([r["gmacs"]], [r["latency_ms"]], marker="*", markersize=14, color="k",
                 linestyle="", label="baseline")
  batch = next((int(r["latency_batch"]) for r in rows if r.get("latency_batch")), None)
  per = f" (batch {batch})" if batch else ""
  axes[0].set(xlabel="GFLOPs per clip (multiply-accumulates)", ylabel="top-1 accuracy (%)",
              title="accuracy vs MACs (labels: alpha)")
  axes[1].set(xlabel=f"latency per batch (ms){per}", ylabel="top-1 accuracy (%)",
              title="accuracy vs measured latency")
  axes[2].set(xlabel="GFLOPs per clip (multiply-accumulates)", ylabel=f"latency (ms){per}",
              title="latency vs MACs, every point")
  for ax in axes:
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
      unique = dict(zip(labels, handles))
      ax.legend(unique.values(), unique.keys(), fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, out_path)
  return out_path


def _save(fig, path: str):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)



"""Evaluation over a whole split: top-1/top-5, per-class accuracy, keypoint precision, points per
frame.

Every example counts exactly once: the pipeline pads the last batch and masks the padding, and
the counts are summed over hosts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from aknet_jax import models, visualize, workdir as workdir_lib
from aknet_jax.data import pipeline
from aknet_jax.train import step as steps


def keypoint_coverage(xyt: np.ndarray, target_mask: np.ndarray, stride: int) -> tuple[float, float]:
  """(precision, chance) of one clip's keypoints against its per-frame target masks.

  A point at feature cell (x, y, t) scores the fraction of that cell's pixels on the target in
  frame t; chance is the same score averaged over every cell, i.e. the target's area fraction,
  which is what uniformly random points would get in expectation.
  """
  t, hh, ww = target_mask.shape
  h, w = hh // stride, ww // stride
  cells = target_mask[:, :h * stride, :w * stride].reshape(t, h, stride, w, stride).mean(axis=(2, 4))
  precision = cells[xyt[:, 2], xyt[:, 1], xyt[:, 0]].mean()
  return float(precision), float(cells.mean())


def points_per_frame(xyt: np.ndarray, target_mask: np.ndarray) -> tuple[float | None, float]:
  """(correlation, coefficient of variation) of one clip's per-frame keypoint counts.

  The count of frame t is the number of selected points whose t coordinate is t (the joint top-k
  over frames lets frames contribute different numbers). The correlation is Pearson's between
  those counts and the target's visible area per frame (mask pixels); None when either is
  constant over the frames (it is undefined). The coefficient of variation is std / mean of the
  counts (0: every frame contributes the same number).
  """
  t = target_mask.shape[0]
  counts = np.bincount(np.asarray(xyt)[:, 2].astype(np.int64), minlength=t)[:t].astype(np.float64)
  area = target_mask.reshape(t, -1).astype(np.float64).sum(axis=1)
  cv = float(counts.std() / counts.mean()) if counts.mean() > 0 else 0.0
  if counts.std() == 0 or area.std() == 0:
    return None, cv
  return float(np.corrcoef(counts, area)[0, 1]), cv


@dataclasses.dataclass
class EvalResult:
  # top1, top5, num_examples (+ keypoint_precision, keypoint_chance, keypoint_frame_cv and, where
  # some clip's counts and target area both vary over frames, keypoint_frame_corr).
  metrics: dict
  per_class: dict  # class index -> {'accuracy', 'num_examples'}.
  images: list  # (frames, xyt, label, prediction) of the first clips, for keypoint overlays.
  indices: list  # Example indices this host evaluated (each exactly once).


class _Totals:
  """Host-side sums of one evaluation, reduced over hosts at the end."""

  def __init__(self, num_classes: int):
    self.k = num_classes
    self.correct = np.zeros(num_classes, np.float64)
    self.count = np.zeros(num_classes, np.float64)
    self.top5 = 0.0
    # precision sum, chance sum, clips, frame-corr sum, clips with a corr, frame-cv sum.
    self.kp = np.zeros(6, np.float64)
    self.indices = []

  def add(self, logits, labels, mask, index):
    logits, labels, mask = logits[mask], labels[mask], mask[mask]
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    hit1 = order[:, 0] == labels
    np.add.at(self.correct, labels, hit1.astype(np.float64))
    np.add.at(self.count, labels, 1.0)
    self.top5 += float(np.any(order == labels[:, None], axis=-1).sum())
    self.indices.extend(int(i) for i in index)

  def reduce(self) -> np.ndarray:
    flat = np.concatenate([self.correct, self.count, [self.top5], self.kp])
    if jax.process_count() > 1:
      flat = np.asarray(multihost_utils.process_allgather(flat)).sum(axis=0)
    return flat


def evaluate(config, p_eval, variables, *, feature_stride: int | None = None,
             num_images: int = 0) -> EvalResult:
  """Runs `p_eval` over the eval split.

  `p_eval(variables, frames)` is the pmapped eval step on replicated variables; with `feature_stride`, it also returns
  keypoints, scored against the dataset's target masks when it has them.
  """
  totals = _Totals(config.dataset.num_classes)
  images = []
  for batch in pipeline.create_eval_iterator(config):
    logits, kp = p_eval(variables, batch["frames"])
    logits = np.asarray(jax.device_get(logits)).reshape(-1, config.dataset.num_classes)
    mask = batch["mask"].reshape(-1)
    labels = batch["label"].reshape(-1)
    totals.add(logits, labels, mask, batch["index"].reshape(-1)[mask])
    if kp is not None:
      # Multi-view eval: frames (D, b, V, ...) reach the model as D x (b*V) clips, so each clip's
      # V views, keypoints and target masks are regrouped here and scored view by view.
      v = batch["frames"].shape[2] if batch["frames"].ndim == 7 else 1
      xyt = np.asarray(jax.device_get(kp["xyt"])).reshape((-1, v) + kp["xyt"].shape[2:])
      if "target_mask" in batch:
        tm = batch["target_mask"]
        masks = tm.reshape((-1, v) + tm.shape[(3 if v > 1 else 2):])
        for i in np.flatnonzero(mask):
          scores = [keypoint_coverage(xyt[i, j], masks[i, j], feature_stride) for j in range(v)]
          per_frame = [points_per_frame(xyt[i, j], masks[i, j]) for j in range(v)]
          corrs = [r for r, _ in per_frame if r is not None]
          totals.kp += (np.mean([p for p, _ in scores]), np.mean([c for _, c in scores]), 1.0,
                        np.mean(corrs) if corrs else 0.0, 1.0 if corrs else 0.0,
                        np.mean([cv for _, cv in per_frame]))
      if len(images) < num_images:
        fr = batch["frames"]
        frames = fr.reshape((-1, v) + fr.shape[(3 if v > 1 else 2):])
        for i in np.flatnonzero(mask)[:num_images - len(images)]:  # The first view of a clip.
          images.append((frames[i, 0], xyt[i, 0], int(labels[i]), int(np.argmax(logits[i]))))
  flat = totals.reduce()
  k = totals.k
  correct, count, top5, kp = flat[:k], flat[k:2 * k], flat[2 * k], flat[2 * k + 1:]
  n = int(count.sum())
  if n == 0:
    raise ValueError(f"the eval split {config.dataset.eval_split!r} of {config.dataset.name} is empty")
  metrics = {"top1": float(correct.sum() / n), "top5": float(top5 / n), "num_examples": n}
  if kp[2] > 0:
    metrics["keypoint_precision"] = float(kp[0] / kp[2])
    metrics["keypoint_chance"] = float(kp[1] / kp[2])
    metrics["keypoint_frame_cv"] = float(kp[5] / kp[2])
    if kp[4] > 0:
      metrics["keypoint_frame_corr"] = float(kp[3] / kp[4])
  per_class = {str(c): {"accuracy": float(correct[c] / count[c]) if count[c] else None,
                        "num_examples": int(count[c])} for c in range(k)}
  return EvalResult(metrics, per_class, images, totals.indices)


def evaluate_and_report(config, workdir: str, stage: str, kind: str, model, variables_repl,
                        step: int, writer, class_names: list[str] | None = None) -> EvalResult:
  """Evaluates replicated variables; writes scalars, keypoint pictures and the results files."""
  with_kp = kind == "aknet"
  p_eval = steps.pmapped_eval_step(model, with_keypoints=with_kp)
  t0 = time.time()
  stride = models.feature_stride(config) if with_kp else None
  res = evaluate(config, p_eval, variables_repl, feature_stride=stride,
                 num_images=config.eval.num_keypoint_images if with_kp else 0)
  logging.info("stage %s eval at step %d: %s (%.1fs)", stage, step,
               {k: round(v, 4) for k, v in res.metrics.items()}, time.time() - t0)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in res.metrics.items()})
  if jax.process_index() != 0:
    return res
  if res.images:
    grids = visualize.save_keypoint_clips(
        os.path.join(workdir_lib.stage_dir(workdir, stage), "keypoints"),
        [(f, xyt) for f, xyt, _, _ in res.images], stride, config.dataset.frames_per_segment,
        [f"label {lab}, predicted {pred}" for _, _, lab, pred in res.images])
    writer.write_images(step, {"eval/keypoints": np.stack(grids)})
  entry = dict(res.metrics, gmacs=models.gmacs(config, kind),
               params=models.param_count(config, kind), step=int(step))
  per_class = {c: dict(v, name=class_names[int(c)]) if class_names else v
               for c, v in res.per_class.items()}
  workdir_lib.record_results(workdir, stage, entry, per_class)
  logging.info("stage %s results: %s", stage, json.dumps(entry, sort_keys=True))
  return res

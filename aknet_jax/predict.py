"""Classifies a video with a trained checkpoint, whole or window by window; draws the keypoints.

  python -m aknet_jax.main --mode=predict --config=CONFIG --workdir=DIR --video=FILE.mp4 \
      [--window_seconds=S [--stride_seconds=R]]

The video (any input PyAV opens: a file, or a URL / stream containing "://") is decoded once with
PyAV, its frames resized to the dataset's stored short side as the builders do, then sampled,
resized, cropped and normalised exactly as at evaluation (`data.eval_views`). Prints the top-5
classes with probabilities and, for AK-Net, writes the keypoint overlay (GIF and PNG) to
WORKDIR/predict/<video name>/. With --window_seconds each window of S seconds, every R seconds,
is classified so: one line per window, windows.csv, timeline.png (and a GIF per window).
"""

from __future__ import annotations

import csv
import itertools
import os
import re

import av
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image

from aknet_jax import models, visualize
from aknet_jax.checkpoints import restore
from aknet_jax.data import builders, source, video_io
from aknet_jax.data import eval_views as eval_views_lib
from aknet_jax.train import step as steps


def stored_short_side(config: ml_collections.ConfigDict) -> int:
  """Short side (px) the dataset's builder stores frames at; 0 = as decoded."""
  builder = builders.BUILDERS.get(config.dataset.name)
  if builder is None:
    return 0
  wanted = config.dataset.builder_config or builder.BUILDER_CONFIGS[0].name
  cfg = next((c for c in builder.BUILDER_CONFIGS if c.name == wanted), None)
  return int(getattr(cfg, "short_side", 0) or 0)


def _is_stream(path: str) -> bool:
  """A URL or stream address ("scheme://...") that PyAV opens itself, not a local file."""
  return "://" in path and not os.path.exists(path)


def decode_video(path: str, short_side: int = 0) -> tuple[np.ndarray, float]:
  """(all frames uint8 (N, H, W, 3), frames per second) of the first video stream of `path`,
  decoded once, short side resized as the builders do.

  Raises a one-line ValueError when the input is missing or cannot be decoded.
  """
  if not _is_stream(path) and not os.path.isfile(path):
    raise ValueError(f"--video: no such file {path}")
  frames, size, fps = [], None, 0.0
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise video_io.VideoError("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
      fps = float(rate) if rate else 0.0
      for frame in container.decode(stream):
        image = video_io.resized_short_side(frame.to_image(), short_side)
        size = size or image.size
        if image.size != size:  # A mid-stream resolution change, handled as the builders do.
          image = image.resize(size, Image.BILINEAR)
        frames.append(np.asarray(image.convert("RGB")))
  except (av.FFmpegError, OSError, ValueError, EOFError, video_io.VideoError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"--video: cannot decode {path}: {reason}") from None
  if not frames:
    raise ValueError(f"--video: {path} holds no video frame")
  return np.stack(frames), fps


def decode_frames(path: str, short_side: int = 0) -> np.ndarray:
  """All frames of a video as uint8 (N, H, W, 3), short side resized as the builders do."""
  return decode_video(path, short_side)[0]


def eval_views(frames: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval views of a decoded clip: float32 ([V,] T*L, S, S, 3), crop-major, exactly as the
  eval pipeline makes them (`data.eval_views`). No view axis when there is one view."""
  frames = tf.constant(frames)
  return eval_views_lib.eval_views(lambda idx: tf.gather(frames, idx), len(frames),
                                   config).numpy()


def windows(num_frames: int, fps: float, window_seconds: float,
            stride_seconds: float | None = None) -> list[tuple[int, int]]:
  """[(first frame, end frame)] of windows of `window_seconds` every `stride_seconds` (default:
  the window), in frames at `fps`; full windows only, plus one ending at the video's end when the
  last one stops short of it. A video shorter than a window is one window."""
  length = max(1, int(round(window_seconds * fps)))
  stride = max(1, int(round((stride_seconds or window_seconds) * fps)))
  if num_frames <= length:
    return [(0, num_frames)]
  spans = [(a, a + length) for a in range(0, num_frames - length + 1, stride)]
  if spans[-1][1] < num_frames:
    spans.append((num_frames - length, num_frames))
  return spans


def _check_windows(window_seconds, stride_seconds):
  if stride_seconds is not None and window_seconds is None:
    raise ValueError("--stride_seconds needs --window_seconds (the length of each window)")
  if window_seconds is not None and not window_seconds > 0:
    raise ValueError(f"--window_seconds={window_seconds}: must be > 0 (seconds per window)")
  if stride_seconds is not None and not stride_seconds > 0:
    raise ValueError(f"--stride_seconds={stride_seconds}: must be > 0 (seconds between "
                     "window starts)")


def output_dir(workdir: str, video: str) -> str:
  """WORKDIR/predict/<video name> (a URL: its last path part, without query, made a safe name)."""
  if not _is_stream(video):
    return os.path.join(workdir, "predict", os.path.splitext(os.path.basename(video))[0])
  name = os.path.splitext(os.path.basename(video.split("?")[0].rstrip("/")))[0]
  return os.path.join(workdir, "predict", re.sub(r"[^\w .+-]", "_", name) or "stream")


class Classifier:
  """The checkpoint's model on batches of eval views: probabilities and (AK-Net) keypoints.

  One code path for a whole video and for its windows; batches are padded to `batch_size` so
  that the model is compiled once.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.kind, self.variables, _, self.step = restore.load_model_variables(config, workdir)
    model = models.build(config, self.kind)
    self.with_kp = self.kind == "aknet"
    self._fn = jax.jit(lambda v, x: steps.eval_step(v, x, model=model,
                                                    with_keypoints=self.with_kp))
    self.names = source.class_names(config)

  def __call__(self, views, batch_size: int = 1):
    """(probs (n, K), xyt (n, N, 3) of each clip's first view, or None) of `views`: an iterable
    of n clips' eval views, consumed a batch at a time."""
    probs, xyts, views = [], [], iter(views)
    while chunk := list(itertools.islice(views, batch_size)):
      batch = np.stack(chunk + [chunk[-1]] * (batch_size - len(chunk)))
      logits, kp = self._fn(self.variables, jnp.asarray(batch))
      probs.append(np.asarray(jax.nn.softmax(logits))[:len(chunk)])
      if self.with_kp:
        xyt = np.asarray(kp["xyt"]).reshape((batch_size, -1) + kp["xyt"].shape[1:])[:, 0]
        xyts.append(xyt[:len(chunk)])
    return np.concatenate(probs), (np.concatenate(xyts) if self.with_kp else None)

  def ranked(self, probs: np.ndarray, top: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:min(top, len(probs))]
    return [(self.names[i], float(probs[i])) for i in order]


def predict(config: ml_collections.ConfigDict, workdir: str, video: str, *, top: int = 5,
            window_seconds: float | None = None, stride_seconds: float | None = None) -> dict:
  """Prints the `top` classes of `video` with probabilities; returns them and the overlay paths.

  The checkpoint is config.eval.checkpoint, else the workdir's latest stage (AK-Net first).
  With `window_seconds`: `predict_windows` instead.
  """
  if not video:
    raise ValueError("--video is required with --mode=predict (a video file PyAV can decode)")
  _check_windows(window_seconds, stride_seconds)
  cfg = config
  classifier = Classifier(cfg, workdir)
  frames, fps = decode_video(video, stored_short_side(cfg))
  if window_seconds is not None:
    return predict_windows(classifier, video, frames, fps, workdir, window_seconds,
                           stride_seconds, top=top)
  views = eval_views(frames, cfg)
  probs, xyt = classifier([views])
  ranked = classifier.ranked(probs[0], top)
  label = "AK-Net" if classifier.with_kp else models.display_name(cfg.model.backbone)
  print(f"{video}: {len(frames)} frames; {label} checkpoint at step {classifier.step}")
  for rank, (name, p) in enumerate(ranked, start=1):
    print(f"{rank}. {name}  {p:.4f}")
  out = {"top": ranked, "probs": probs[0], "keypoints": None}
  if classifier.with_kp:
    first = views if views.ndim == 4 else views[0]
    directory = output_dir(workdir, video)
    visualize.save_keypoint_clips(directory, [(first, xyt[0])], models.feature_stride(cfg),
                                  cfg.dataset.frames_per_segment,
                                  [f"{ranked[0][0]} ({ranked[0][1]:.3f})"])
    out["keypoints"] = os.path.join(directory, "clip_000.gif")
    print(f"keypoints ({len(xyt[0])} points): {out['keypoints']}")
  return out


def predict_windows(classifier: Classifier, video: str, frames: np.ndarray, fps: float,
                    workdir: str, window_seconds: float, stride_seconds: float | None = None, *,
                    top: int = 5) -> dict:
  """Classifies each window of the decoded `frames` as `predict` classifies a whole video; prints
  a line per window, writes windows.csv, timeline.png (and AK-Net's GIF per window)."""
  if not fps > 0:
    raise ValueError(f"--video: {video} records no frame rate; windows need one")
  cfg = classifier.config
  spans = windows(len(frames), fps, window_seconds, stride_seconds)
  firsts = []  # AK-Net: each window's first view, for its keypoint GIF.

  def views():
    for a, b in spans:
      v = eval_views(frames[a:b], cfg)
      if classifier.with_kp:
        firsts.append(v if v.ndim == 4 else v[0])
      yield v
  probs, xyt = classifier(views(), batch_size=max(1, int(cfg.eval.batch_size)))
  label = "AK-Net" if classifier.with_kp else models.display_name(cfg.model.backbone)
  print(f"{video}: {len(frames)} frames at {fps:g} fps ({len(frames) / fps:.2f} s), "
        f"{len(spans)} windows of {window_seconds:g} s; {label} checkpoint at step "
        f"{classifier.step}")
  directory = output_dir(workdir, video)
  os.makedirs(directory, exist_ok=True)
  rows = []
  for i, ((a, b), p) in enumerate(zip(spans, probs)):
    ranked = classifier.ranked(p, top)
    rows.append([i, f"{a / fps:.3f}", f"{b / fps:.3f}"]
                + [x for name, q in ranked for x in (name, f"{q:.6f}")])
    span = f"{a / fps:.2f}-{b / fps:.2f}"
    print(f"{i:4d}  {span:>15} s  {ranked[0][0]}  {ranked[0][1]:.4f}")
  k = min(top, probs.shape[1])
  csv_path = os.path.join(directory, "windows.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["window", "start_s", "end_s"]
                    + [c for r in range(1, k + 1) for c in (f"top{r}_class", f"top{r}_prob")])
    writer.writerows(rows)
  png = timeline(os.path.join(directory, "timeline.png"), spans, fps, probs, classifier.names,
                 title=os.path.basename(directory))
  out = {"windows": [(a / fps, b / fps) for a, b in spans], "probs": probs, "csv": csv_path,
         "timeline": png, "keypoints": None}
  print(f"windows: {csv_path}\ntimeline: {png}")
  if classifier.with_kp:
    captions = [f"{a / fps:.1f}-{b / fps:.1f} s: {r[3]} ({float(r[4]):.3f})"
                for (a, b), r in zip(spans, rows)]
    visualize.save_keypoint_clips(directory, list(zip(firsts, xyt)), models.feature_stride(cfg),
                                  cfg.dataset.frames_per_segment, captions)
    out["keypoints"] = [os.path.join(directory, f"clip_{i:03d}.gif") for i in range(len(spans))]
    _drop_stale_clips(directory, len(spans))
    print(f"keypoints: {directory}/clip_NNN.gif, one per window")
  return out


def _drop_stale_clips(directory: str, first: int):
  """Removes clip_NNN.gif/png from NNN = `first` on: a previous run's windows beyond this run's."""
  for i in itertools.count(first):
    paths = [p for p in (os.path.join(directory, f"clip_{i:03d}.{e}") for e in ("gif", "png"))
             if os.path.exists(p)]
    if not paths:
      return
    for p in paths:
      os.remove(p)


def timeline(path: str, spans: list[tuple[int, int]], fps: float, probs: np.ndarray,
             names: list[str], *, num_classes: int = 5, title: str = "") -> str:
  """PNG of each window's probability (at its centre, in seconds) of the classes most probable in
  some window (at most `num_classes`)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  centres = np.array([(a + b) / 2 / fps for a, b in spans])
  shown = np.argsort(-probs.max(axis=0), kind="stable")[:min(num_classes, probs.shape[1])]
  fig, ax = plt.subplots(figsize=(8, 3.2))
  for c in shown:
    ax.plot(centres, probs[:, c], marker="o", markersize=3, label=names[c])
  ax.set_xlabel("time (s, window centre)")
  ax.set_ylabel("probability")
  ax.set_ylim(0, 1)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path

"""Classifies one video file with a trained checkpoint; draws AK-Net's keypoints on its frames.

  python -m aknet_jax.main --mode=predict --config=CONFIG --workdir=DIR --video=FILE.mp4

The video is decoded with PyAV (`data.video_io`), its frames resized to the dataset's stored short
side as the builders do, then sampled, resized, cropped and normalised exactly as at evaluation
(`data.eval_views`). Prints the top-5 classes with probabilities and,
for AK-Net, writes the keypoint overlay (GIF and PNG) to WORKDIR/predict/<video name>/.
"""

from __future__ import annotations

import os

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


def decode_frames(path: str, short_side: int = 0) -> np.ndarray:
  """All frames of a video file as uint8 (N, H, W, 3), short side resized as the builders do.

  Raises a one-line ValueError when the file is missing or cannot be decoded.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--video: no such file {path}")
  frames, size = [], None
  try:
    for image in video_io.decode_video(path):
      image = video_io.resized_short_side(image, short_side)
      size = size or image.size
      if image.size != size:  # A mid-stream resolution change, handled as the builders do.
        image = image.resize(size, Image.BILINEAR)
      frames.append(np.asarray(image.convert("RGB")))
  except (av.FFmpegError, OSError, ValueError, EOFError, video_io.VideoError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"--video: cannot decode {path}: {reason}") from None
  if not frames:
    raise ValueError(f"--video: {path} holds no video frame")
  return np.stack(frames)


def eval_views(frames: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval views of a decoded clip: float32 ([V,] T*L, S, S, 3), crop-major, exactly as the
  eval pipeline makes them (`data.eval_views`). No view axis when there is one view."""
  frames = tf.constant(frames)
  return eval_views_lib.eval_views(lambda idx: tf.gather(frames, idx), len(frames),
                                   config).numpy()


def predict(config: ml_collections.ConfigDict, workdir: str, video: str, *, top: int = 5) -> dict:
  """Prints the `top` classes of `video` with probabilities; returns them and the overlay paths.

  The checkpoint is config.eval.checkpoint, else the workdir's latest stage (AK-Net first).
  """
  if not video:
    raise ValueError("--video is required with --mode=predict (a video file PyAV can decode)")
  kind, variables, _, step = restore.load_model_variables(config, workdir)
  cfg = config
  frames = decode_frames(video, stored_short_side(cfg))
  views = eval_views(frames, cfg)
  model = models.build(cfg, kind)
  with_kp = kind == "aknet"
  fn = jax.jit(lambda v, x: steps.eval_step(v, x, model=model, with_keypoints=with_kp))
  logits, kp = fn(variables, jnp.asarray(views)[None])
  probs = np.asarray(jax.nn.softmax(logits[0]))
  names = source.class_names(cfg)
  order = np.argsort(-probs, kind="stable")[:min(top, len(probs))]
  ranked = [(names[i], float(probs[i])) for i in order]
  label = "AK-Net" if with_kp else cfg.model.backbone.upper()
  print(f"{video}: {len(frames)} frames; {label} checkpoint at step {step}")
  for rank, (name, p) in enumerate(ranked, start=1):
    print(f"{rank}. {name}  {p:.4f}")
  out = {"top": ranked, "keypoints": None}
  if with_kp:
    first = views if views.ndim == 4 else views[0]
    xyt = np.asarray(kp["xyt"][0])
    directory = os.path.join(workdir, "predict", os.path.splitext(os.path.basename(video))[0])
    visualize.save_keypoint_clips(directory, [(first, xyt)], models.feature_stride(cfg),
                                  cfg.dataset.frames_per_segment,
                                  [f"{ranked[0][0]} ({ranked[0][1]:.3f})"])
    out["keypoints"] = os.path.join(directory, "clip_000.gif")
    print(f"keypoints ({len(xyt)} points): {out['keypoints']}")
  return out

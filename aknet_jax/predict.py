"""Classifies one video file with a trained checkpoint; draws AK-Net's keypoints on its frames.

  python -m aknet_jax.main --mode=predict --config=CONFIG --workdir=DIR --video=FILE.mp4

The video is decoded with PyAV (`data.video_io`), its frames resized to the dataset's stored short
side as the builders do, then sampled, resized, cropped and normalised exactly as at evaluation
(`data.sampling.eval_indices`, `data.augment`). Prints the top-5 classes with probabilities and,
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

from aknet_jax import models, train, train_step as steps, visualize
from aknet_jax.data import augment, builders, class_names, sampling, video_io


def class_names_for(dataset: str, num_classes: int) -> list[str]:
  """Class names of a dataset ('class i' where no list of `num_classes` names is known)."""
  names = None
  if dataset == "synthetic_something":
    from aknet_jax.data import synthetic_something  # pylint: disable=g-import-not-at-top
    names = list(synthetic_something.CLASSES)
  elif dataset.startswith("something_something"):
    names = list(class_names.class_names("ssv2"))
  elif dataset == "diving48":
    names = list(class_names.class_names("diving48"))
  if names is None or len(names) != num_classes:
    names = [f"class {i}" for i in range(num_classes)]
  return names


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
  """The eval views of a decoded clip: float32 ([V,] T*L, S, S, 3), crop-major as the pipeline.

  Same ops as the eval pipeline: `eval_indices` per clip, short side to `dataset.resize_short`,
  `eval_crops`, ImageNet normalisation. No view axis when there is one view.
  """
  d, e = config.dataset, config.eval
  per_crop = [[] for _ in range(e.num_crops)]
  for clip in range(e.num_clips):
    idx = sampling.eval_indices(len(frames), d.num_segments, d.frames_per_segment, clip,
                                e.num_clips).numpy()
    resized = augment.resize_short_side(tf.constant(frames[idx]), d.resize_short)
    for c, crop in enumerate(augment.eval_crops(resized, d.image_size, e.num_crops)):
      per_crop[c].append(augment.normalize(crop).numpy())
  views = [v for crop in per_crop for v in crop]
  return views[0] if len(views) == 1 else np.stack(views)


def predict(config: ml_collections.ConfigDict, workdir: str, video: str, *, top: int = 5) -> dict:
  """Prints the `top` classes of `video` with probabilities; returns them and the overlay paths.

  The checkpoint is config.eval.checkpoint, else the workdir's latest stage (AK-Net first).
  """
  if not video:
    raise ValueError("--video is required with --mode=predict (a video file PyAV can decode)")
  cfg, stage, variables, _, step = train.load_checkpoint(config, workdir)
  frames = decode_frames(video, stored_short_side(cfg))
  views = eval_views(frames, cfg)
  model = models.build(cfg)
  with_kp = stage == "2"
  fn = jax.jit(lambda v, x: steps.eval_step(v, x, model=model, with_keypoints=with_kp))
  logits, kp = fn(variables, jnp.asarray(views)[None])
  probs = np.asarray(jax.nn.softmax(logits[0]))
  names = class_names_for(cfg.dataset.name, cfg.dataset.num_classes)
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

"""Exports a workdir's model for inference outside this repository: serialized StableHLO
(`jax.export`) and, where jax2tf works, a TF SavedModel, each with the variables baked in.

  python -m aknet_jax.export --config=CONFIG --workdir=DIR [--checkpoint=PATH] --out=OUT

OUT/model.stablehlo takes float32 clips, batch dimension symbolic, laid out and normalised as
OUT/model.json says (what `predict.eval_views` makes), and returns the logits (AK-Net: also the
keypoints' (x, y, t) feature cells), lowered for --platforms (default cpu,cuda). Reload it with
`jax.export.deserialize(bytes).call(x)`. OUT/saved_model/ has the serving signature
`serving_default(frames) -> {logits[, keypoints]}`; it is checked after writing and left out,
with the reason printed, where TF cannot run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from aknet_jax import cli

STABLEHLO = "model.stablehlo"
META = "model.json"
SAVED_MODEL = "saved_model"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def num_views(config: ml_collections.ConfigDict) -> int:
  """Views per clip at evaluation (crops x clips); the exported function averages their logits."""
  return int(config.eval.num_crops) * int(config.eval.num_clips)


def clip_layout(config: ml_collections.ConfigDict) -> tuple[list, str]:
  """(input shape with "batch" symbolic, layout string) of the exported function's input."""
  d = config.dataset
  frames = [d.num_segments * d.frames_per_segment, d.image_size, d.image_size, 3]
  if num_views(config) > 1:
    return ["batch", num_views(config), *frames], "B, V, T*L, H, W, C"
  return ["batch", *frames], "B, T*L, H, W, C"


def inference_fn(config: ml_collections.ConfigDict, kind: str, variables):
  """frames -> logits (AK-Net: (logits, keypoints xyt)) with `variables` closed over (baked in).

  The same computation as evaluation (`train.step.eval_step`): multi-view logits averaged.
  """
  from aknet_jax import models  # pylint: disable=g-import-not-at-top
  from aknet_jax.train import step as steps  # pylint: disable=g-import-not-at-top
  model = models.build(config, kind)
  with_kp = kind == "aknet"

  def fn(frames):
    logits, kp = steps.eval_step(variables, frames, model=model, with_keypoints=with_kp)
    if not with_kp:
      return logits
    xyt = kp["xyt"]
    return logits, xyt.reshape(frames.shape[:-4] + xyt.shape[1:])  # (B[, V], N, 3)
  return fn


@contextlib.contextmanager
def _stablehlo_at_most(version: str):
  """Serializes jax.export modules at StableHLO `version` or older while active.

  JAX writes StableHLO newer than TF's XlaCallModule reads (JAX 0.10.2: 1.15.0, TF 2.21: 1.13.7);
  the module is the same, written at the older bytecode version (a private JAX hook, hence the
  round-trip check in `_saved_model`).
  """
  from jax._src.export import _export  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir.dialects import hlo  # pylint: disable=g-import-not-at-top
  original = _export._module_to_bytecode  # pylint: disable=protected-access
  newest = hlo.get_version_from_compatibility_requirement(
      hlo.StablehloCompatibilityRequirement.WEEK_4)
  key = lambda v: tuple(int(p) for p in v.split("."))
  target = min(newest, version, key=key)

  def to_bytecode(module):
    return _export._jax.mlir.serialize_portable_artifact(  # pylint: disable=protected-access
        module, target, _export.xb.get_backend().serialize_with_sdy)
  _export._module_to_bytecode = to_bytecode  # pylint: disable=protected-access
  try:
    yield
  finally:
    _export._module_to_bytecode = original  # pylint: disable=protected-access


def _saved_model(fn, shape: list, directory: str, platforms: tuple[str, ...]) -> str:
  """Writes a TF SavedModel of `fn` (jax2tf), reloads it and checks it against `fn` on two
  clips; returns '' or one line saying why there is none.

  Its module has a static batch of one, mapped over the clips (tf.map_fn): TF 2.21's
  XlaCallModule cannot refine a symbolic batch through top_k's `chlo.top_k` composite.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
    from tensorflow.compiler.mlir.stablehlo import stablehlo  # pylint: disable=g-import-not-at-top
    one = jax.ShapeDtypeStruct((1, *shape[1:]), jnp.float32)
    outs = jax.eval_shape(fn, one)
    outs = outs if isinstance(outs, tuple) else (outs,)
    names = ("logits", "keypoints")[:len(outs)]
    converted = jax2tf.convert(fn, with_gradient=False, native_serialization_platforms=platforms)

    def serve(frames):
      def per_clip(clip):
        out = converted(clip[None])
        return tuple(o[0] for o in (out if isinstance(out, (tuple, list)) else (out,)))
      spec = tuple(tf.TensorSpec(o.shape[1:], tf.as_dtype(o.dtype)) for o in outs)
      return dict(zip(names, tf.map_fn(per_clip, frames, fn_output_signature=spec)))

    module = tf.Module()
    module.serve = tf.function(serve, autograph=False, input_signature=[
        tf.TensorSpec([None, *shape[1:]], tf.float32, name="frames")])
    with _stablehlo_at_most(stablehlo.get_current_version()):
      tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})
    clip = np.random.default_rng(0).normal(size=[2, *shape[1:]]).astype(np.float32)
    got = tf.saved_model.load(directory).signatures["serving_default"](frames=tf.constant(clip))
    want = fn(jnp.asarray(clip))
    want = want[0] if isinstance(want, tuple) else want
    err = float(np.max(np.abs(got["logits"].numpy() - np.asarray(want))))
    if not err <= 1e-4:
      raise ValueError(f"the reloaded SavedModel's logits differ from JAX's by {err:.2g}")
    return ""
  except Exception as e:  # pylint: disable=broad-except  (optional output: any failure skips it)
    logging.debug("jax2tf export failed", exc_info=True)
    shutil.rmtree(directory, ignore_errors=True)
    return f"{type(e).__name__}: {cli.one_line(str(e))[:300]}"


def export(config: ml_collections.ConfigDict, workdir: str, out: str, *,
           checkpoint: str | None = None, saved_model: bool = True,
           platforms: tuple[str, ...] = ("cpu", "cuda")) -> dict:
  """Writes OUT/model.stablehlo, OUT/model.json and (if jax2tf works) OUT/saved_model/.

  The checkpoint is `checkpoint`, else config.eval.checkpoint, else the workdir's latest stage
  (AK-Net first), as `--mode=eval` picks it; lowered for each of `platforms`. Returns model.json.
  """
  from aknet_jax import models  # pylint: disable=g-import-not-at-top
  from aknet_jax.checkpoints import restore  # pylint: disable=g-import-not-at-top
  from aknet_jax.data import augment, source  # pylint: disable=g-import-not-at-top
  from aknet_jax.models import winograd  # pylint: disable=g-import-not-at-top
  if not out:
    raise ValueError("--out is required: the directory model.stablehlo and model.json go to")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out={out} is a file, not a directory")
  platforms = tuple(platforms)
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ValueError(f"--platforms: {','.join(bad) or 'none given'} not among "
                     f"{','.join(PLATFORMS)} (a comma-separated list, e.g. --platforms=cpu,cuda)")
  if checkpoint:
    config = config.copy_and_resolve_references()
    config.eval.checkpoint = checkpoint
  kind, variables, _, step = restore.load_model_variables(config, workdir)
  fn = inference_fn(config, kind, jax.tree_util.tree_map(jnp.asarray, variables))
  shape, layout = clip_layout(config)
  batch = jax.export.symbolic_shape("batch")[0]
  spec = jax.ShapeDtypeStruct((batch, *shape[1:]), jnp.float32)
  with winograd.lowering_for(platforms):  # CPU's formulations in the CPU module only.
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(spec)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, STABLEHLO), "wb") as f:
    f.write(exported.serialize())
  d = config.dataset
  meta = {
      "kind": kind, "backbone": config.model.backbone, "checkpoint_step": int(step),
      "input_shape": shape, "input_dtype": "float32", "layout": layout,
      "layout_note": "T*L: num_segments segments of frames_per_segment frames, segment-major; "
                     "V: eval views crop-major then clip, logits averaged over V",
      "normalisation": "x = (rgb / 255 - mean) / std (ImageNet)",
      "mean": [float(m) for m in augment.MEAN_RGB], "std": [float(s) for s in augment.STDDEV_RGB],
      "num_segments": int(d.num_segments), "frames_per_segment": int(d.frames_per_segment),
      "image_size": int(d.image_size), "resize_short": int(d.resize_short),
      "num_crops": int(config.eval.num_crops), "num_clips": int(config.eval.num_clips),
      "outputs": ["logits"] + (["keypoints"] if kind == "aknet" else []),
      "logits_shape": ["batch", int(d.num_classes)],
      "class_names": source.class_names(config),
      "variables": "baked in as constants",
      "jax_version": jax.__version__, "platforms": list(exported.platforms),
      "saved_model": None,
  }
  if kind == "aknet":
    meta["keypoints_note"] = ("int32 (B[, V], N, 3): each keypoint's (x, y, t) feature cell, "
                              f"ranked; x, y cells of {models.feature_stride(config)} px")
  if saved_model:
    with winograd.lowering_for(platforms):
      reason = _saved_model(fn, shape, os.path.join(out, SAVED_MODEL), platforms)
    meta["saved_model"] = SAVED_MODEL if not reason else f"skipped: {reason}"
  with open(os.path.join(out, META), "w") as f:
    json.dump(meta, f, indent=1)
  return meta


def _define_flags():
  flags.DEFINE_string("workdir", None, "The training workdir whose checkpoint is exported.")
  flags.DEFINE_string("checkpoint", None, "A checkpoint directory or step (default: "
                      "config.eval.checkpoint, else the workdir's latest stage).")
  flags.DEFINE_string("out", None, "Directory for model.stablehlo, model.json, saved_model/.")
  flags.DEFINE_bool("saved_model", True, "Also write a TF SavedModel (jax2tf).")
  flags.DEFINE_list("platforms", ["cpu", "cuda"], f"Platforms to lower for, of {PLATFORMS}.")
  config_flags.DEFINE_config_file("config", "configs/synthetic.py",
                                  "Experiment config file[:string] of the workdir.",
                                  lock_config=True)


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  args = flags.FLAGS
  for name in ("workdir", "out"):
    if not getattr(args, name):
      cli.fail(f"--{name} is required (python -m aknet_jax.export --help)")
  if not args["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from aknet_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  meta = cli.call(export, args.config, args.workdir, args.out, checkpoint=args.checkpoint,
                  saved_model=args.saved_model, platforms=args.platforms)
  shape = "x".join(str(s) for s in meta["input_shape"])
  print(f"wrote {os.path.join(args.out, STABLEHLO)}: {meta['kind']} at step "
        f"{meta['checkpoint_step']}, input float32 {shape} ({meta['layout']}), outputs "
        f"{', '.join(meta['outputs'])}")
  saved = meta["saved_model"]
  print(f"wrote {os.path.join(args.out, SAVED_MODEL)}/" if saved == SAVED_MODEL
        else f"TF SavedModel {saved}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)

"""Prints the inference cost (GFLOPs as multiply-accumulates) and parameters of the models.

  python -m aknet_jax.macs [--depth=50 --frames=8 --image_size=224 --split=res4 --alpha=0.3]

Costs are XLA's cost analysis of one clip's jitted inference, flops / 2 (the paper's "GFLOPs" are
MACs); no weights are allocated, so the full-mode transform net (~270 M parameters at res4) costs
nothing to count.
"""

from __future__ import annotations

from absl import app
from absl import flags

from aknet_jax import cli
from aknet_jax import config as config_lib
from aknet_jax import models

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 50, "ResNet depth (18, 34, 50, 101).")
flags.DEFINE_integer("width", 64, "ResNet base width (64 = the standard nets).")
flags.DEFINE_integer("frames", 8, "Segments per clip (T).")
flags.DEFINE_integer("image_size", 224, "Input side in pixels.")
flags.DEFINE_enum("split", "res4", list(config_lib.SPLITS), "AK-Net split stage.")
flags.DEFINE_float("alpha", 0.3, "AK-Net keypoint ratio.")
flags.DEFINE_integer("rank", 64, "Rank of the 'lowrank' transform.")
flags.DEFINE_integer("num_classes", 174, "Classifier outputs (174 = Something-Something).")

# Paper Table II (8 frames, 224^2, ResNet-50, split res4, alpha 0.3, the full transform net).
PAPER_GFLOPS = {("tsm", None): 33, ("tdn", None): 36, ("tsm", "full"): 28, ("tdn", "full"): 31}
# (name, backbone, transform mode or None for the baseline, Q's point stride).
ROWS = (("TSN", "tsn", None, None), ("TSM", "tsm", None, None), ("TDN", "tdn", None, None)) + tuple(
    (f"AK-Net-{b.upper()}", b, mode, stride) for b in ("tsm", "tdn")
    for mode in ("full", "lowrank", "none") for stride in config_lib.POINT_STRIDES)
# TAda2D (TAdaConv paper, SSV2 / K400 tables): 43 G as the official code counts it (fvcore) on its
# test crop, 8 x 256^2 (configs/projects/tada: TEST_CROP_SIZE 256); the net is ~32 G at 224^2.
PAPER_GFLOPS[("tada2d", None)] = 43
PAPER_AT = {"tada2d": " (256²)"}  # A paper figure counted at another input size than the table's.
ROWS += (("TAda2D", "tada2d", None, None),) + tuple(
    ("AK-Net-TAda2D", "tada2d", mode, stride) for mode in ("full", "lowrank", "none")
    for stride in config_lib.POINT_STRIDES)
# TEA (TEA paper, Table 1/2: TEA-R50, 8 frames, 224^2 single crop): 35 G.
PAPER_GFLOPS[("tea", None)] = 35
ROWS += (("TEA", "tea", None, None),) + tuple(
    ("AK-Net-TEA", "tea", mode, stride) for mode in ("full", "lowrank", "none")
    for stride in config_lib.POINT_STRIDES)


def row_config(backbone: str, transform: str | None, *, depth=50, width=64, frames=8,
               image_size=224, split="res4", alpha=0.3, rank=64, num_classes=174,
               point_stride="same"):
  """The config of one table row (AK-Net's fields unused when `transform` is None)."""
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.width = backbone, depth, width
  c.dataset.num_segments, c.dataset.image_size = frames, image_size
  c.dataset.resize_short = max(c.dataset.resize_short, image_size)
  c.dataset.frames_per_segment = config_lib.frames_per_segment(backbone)
  c.dataset.num_classes = num_classes
  c.model.aknet.split, c.model.aknet.alpha = split, alpha
  c.model.aknet.transform_mode = transform or "full"
  c.model.aknet.transform_rank = rank
  c.model.aknet.point_stride = point_stride
  return config_lib.validate(c)


def table(**kwargs) -> str:
  """The Markdown table of ROWS for these settings (row_config's keywords)."""
  paper_settings = dict(depth=50, width=64, frames=8, image_size=224, split="res4", alpha=0.3)
  settings = {**paper_settings, **kwargs}
  is_paper = all(settings[k] == v for k, v in paper_settings.items())
  lines = [f"ResNet-{settings['depth']}, {settings['frames']} frames, {settings['image_size']}², "
           f"AK-Net split {settings['split']}, alpha {settings['alpha']}; one clip, inference. "
           "GFLOPs = multiply-accumulates (paper convention) = XLA cost-analysis flops / 2. "
           "Params include AK-Net's training-only auxiliary head; the last column leaves it out.",
           "",
           "| model | transform | point stride | GFLOPs (MACs) | paper GFLOPs | params (M) | "
           "params at inference (M) |",
           "|---|---|---|---:|---:|---:|---:|"]
  for name, backbone, transform, stride in ROWS:
    config = row_config(backbone, transform, point_stride=stride or "same", **kwargs)
    kind = "video_net" if transform is None else "aknet"
    paper = PAPER_GFLOPS.get((backbone, transform)) if is_paper else None
    shapes = models.variable_shapes(config, kind)
    params = [models.param_count(config, kind, inference=i, shapes=shapes) / 1e6
              for i in (False, True)]
    lines.append(f"| {name} | {transform or '—'} | {stride or '—'} | "
                 f"{models.gmacs(config, kind, shapes=shapes):.2f} | "
                 f"{f'{paper}{PAPER_AT.get(backbone, str())}' if paper else '—'} | "
                 f"{params[0]:.1f} | {params[1]:.1f} |")
  return "\n".join(lines)


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  print(cli.call(table, depth=FLAGS.depth, width=FLAGS.width, frames=FLAGS.frames,
                 image_size=FLAGS.image_size, split=FLAGS.split, alpha=FLAGS.alpha,
                 rank=FLAGS.rank, num_classes=FLAGS.num_classes))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

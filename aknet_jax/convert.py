"""PyTorch checkpoints (torchvision ResNet, official TSM / TDN) -> an Orbax checkpoint of our model.

Reading the file is `checkpoints.pytorch`, the name and layout mapping `checkpoints.torch_layout`.
CLI (torch is the `convert` extra, imported only to read the file, with `weights_only=True`):
  python -m aknet_jax.convert --source=torchvision|tsm|tdn --checkpoint=FILE
      --config=CONFIG --workdir=DIR [--drop_classifier]
tsm / tdn files become WORKDIR/stage1/checkpoints/0 (what `main --mode=eval` and stage 2 read);
torchvision ImageNet files WORKDIR/checkpoints/0, backbone only, for `config.init_from`.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from aknet_jax import cli, config as config_lib
from aknet_jax.checkpoints import architecture, pytorch, tada_layout, torch_layout, write_variables


def convert_checkpoint(source: str, path: str, config, workdir: str, *,
                       drop_classifier: bool = False) -> str:
  """Converts a PyTorch file into an Orbax checkpoint under `workdir`; returns its step directory.

  tsm / tdn -> WORKDIR/stage1/checkpoints/0: a stage-1 checkpoint that `main --mode=eval` evaluates
  and stage 2 compacts. torchvision -> WORKDIR/checkpoints/0: ImageNet backbone variables only, for
  `config.init_from` (its meta has no class count, so any dataset can start from it).
  """
  if source not in pytorch.SOURCES:
    raise ValueError(f"--source={source!r} is not one of {pytorch.SOURCES}")
  config = config_lib.validate(config.copy_and_resolve_references())
  imagenet = source == "torchvision"
  directory = os.path.join(workdir, "checkpoints") if imagenet else os.path.join(
      workdir, "stage1", "checkpoints")
  if os.path.isdir(directory) and any(s.isdigit() for s in os.listdir(directory)):
    raise ValueError(f"{directory} already holds checkpoints: convert into a new --workdir")
  state = pytorch.load_state_dict(path)
  pytorch.check_source(state, source, config, path)
  if source == "tada2d":  # Official TAdaConv names and 5D / 6D conv weights -> torchvision's.
    state = tada_layout.to_canonical(state)
  origin = {"source": source, "file": os.path.abspath(path)}
  arch = architecture.record(config, "video_net")
  if imagenet:
    variables = torch_layout.imagenet_to_variables(state, config)
    # ImageNet weights fit any segment count and class count: only the ResNet is recorded.
    arch = {k: v for k, v in architecture.record(config, "backbone").items()
            if k in ("kind", "backbone", "depth", "width")}
    meta = {"architecture": arch, "step": 0, "backbone_only": True, "converted_from": origin}
  else:
    variables, origin["classifier"] = torch_layout.video_checkpoint_to_variables(
        state, config, drop_classifier=drop_classifier, seed=config.train.seed)
    meta = {"architecture": arch, "step": 0, "converted_from": origin}
  write_variables(directory, 0, variables, meta)
  return os.path.join(directory, "0")


def _define_flags():
  """Defined only when run as a program: `aknet_jax.main` defines --config and --workdir too."""
  flags.DEFINE_enum("source", None, list(pytorch.SOURCES),
                    "torchvision: an ImageNet ResNet file; tsm: an official TSM / TSN checkpoint; "
                    "tdn: an official TDN checkpoint; tea: a TEA checkpoint (official code's "
                    "layout); tada2d: an official TAdaConv (TAda2D) checkpoint.")
  flags.DEFINE_string("checkpoint", None, "The PyTorch file (.pth / .pth.tar).")
  flags.DEFINE_string("workdir", None, "Where the Orbax checkpoint goes (tsm/tdn: "
                      "stage1/checkpoints/0; torchvision: checkpoints/0).")
  flags.DEFINE_bool("drop_classifier", False,
                    "Replace the checkpoint's classifier by a fresh one for "
                    "config.dataset.num_classes.")
  config_flags.DEFINE_config_file("config", None,
                                  "Experiment config file[:string] the weights are for.",
                                  lock_config=True)


def main(argv):
  del argv  # Flags only (cli.parse_flags rejects the rest).
  args = flags.FLAGS
  for name in ("source", "checkpoint", "config", "workdir"):
    if getattr(args, name) is None:
      cli.fail(f"--{name} is required (python -m aknet_jax.convert --help)")
  if not args["verbosity"].present:  # The result is one printed line; library INFO is noise here.
    logging.set_verbosity(logging.WARNING)
  step_dir = cli.call(convert_checkpoint, args.source, args.checkpoint, args.config, args.workdir,
                      drop_classifier=args.drop_classifier)
  if args.source == "torchvision":
    print(f"wrote {step_dir}: start stage 1 from it with init_from={args.workdir} in the config "
          "string")
  else:
    print(f"wrote {step_dir}: evaluate with python -m aknet_jax.main --workdir={args.workdir} "
          "--mode=eval, or build AK-Net with stage=2 in the config string")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)

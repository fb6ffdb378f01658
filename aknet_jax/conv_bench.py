"""Times ResNet's stride-1 3x3 layers as XLA's convolution and as Winograd F(2x2, 3x3), per layer.

  python -m aknet_jax.conv_bench [--frames=8,16,64] [--layers=56x64,28x128,14x256,7x512] [--reps=5]

Forward, and forward + both gradients (the training step's share), each jitted alone, the two
forms in interleaved rounds; the median ms and the Winograd / XLA ratio per layer, and whether
`models.conv.Conv` picks Winograd for that shape (`winograd.applies`). The evidence behind
`winograd.MIN_CHANNELS` and `MIN_TILES` (docs/benchmarks.md).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from aknet_jax import cli
from aknet_jax import timing
from aknet_jax.models import winograd

FLAGS = flags.FLAGS
flags.DEFINE_list("frames", ["8", "16", "64"], "Frames per call (clips x segments), e.g. 8,16,64.")
flags.DEFINE_list("layers", ["56x64", "28x128", "14x256", "7x512"],
                  "Layers as SIDExCHANNELS (C_in = C_out); ResNet-50's by default, TDN's mSE "
                  "convs are e.g. 56x16,28x16.")
flags.DEFINE_integer("reps", 5, "Interleaved rounds (the median is reported).")


def _forms():
  wino = lambda x, w: winograd._winograd(x, w, None, None)  # pylint: disable=protected-access
  return {"xla": winograd.direct, "winograd": wino}


def _with_gradients(f):
  def step(x, w, g):
    y, vjp = jax.vjp(f, x, w)
    return (y,) + vjp(g)
  return jax.jit(step)


def time_layer(frames: int, side: int, channels: int, reps: int) -> dict:
  """{'fwd': {form: ms}, 'train': {form: ms}} for one layer shape, medians of interleaved rounds."""
  rng = np.random.default_rng(0)
  shape = (frames, side, side, channels)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32) / (3 * channels**.5))
  g = jnp.asarray(rng.standard_normal(shape, np.float32))
  calls = {}
  for name, f in _forms().items():
    if side % 2 and name == "winograd":
      continue  # The Winograd form here tiles even sides only.
    fwd, train = jax.jit(f), _with_gradients(f)
    calls[("fwd", name)] = lambda fwd=fwd: fwd(x, w)
    calls[("train", name)] = lambda train=train: train(x, w, g)
  times = timing.time_interleaved(calls, reps)
  out = {"fwd": {}, "train": {}}
  for (what, name), seconds in times.items():
    out[what][name] = 1e3 * float(np.median(seconds))
  return out


def table(frames: list[int], layers: list[tuple[int, int]], reps: int) -> str:
  lines = [f"{timing.device_name()}; load average "
           f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} at the end; median of {reps} rounds.",
           "", "| frames | layer | XLA fwd (ms) | Winograd fwd | ratio | XLA fwd+bwd (ms) | "
           "Winograd fwd+bwd | ratio | Conv picks Winograd |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
  for n in frames:
    for side, c in layers:
      r = time_layer(n, side, c, reps)
      cells = []
      for what in ("fwd", "train"):
        xla, wino = r[what]["xla"], r[what].get("winograd")
        cells += [f"{xla:.1f}", "—" if wino is None else f"{wino:.1f}",
                  "—" if wino is None else f"{wino / xla:.2f}"]
      picks = "yes" if winograd.applies((n, side, side, c), c, jnp.float32) else "no"
      lines.append(f"| {n} | {side}×{side}×{c} | " + " | ".join(cells) + f" | {picks} |")
  return "\n".join(lines)


def _layer(spec: str) -> tuple[int, int]:
  try:
    side, channels = (int(v) for v in spec.lower().split("x"))
  except ValueError:
    cli.fail(f"--layers: {spec!r} is not SIDExCHANNELS (e.g. 56x64)")
  return side, channels


def main(argv):
  del argv
  try:
    frames = [int(f) for f in FLAGS.frames]
  except ValueError:
    cli.fail(f"--frames: {','.join(FLAGS.frames)!r} is not a list of integers (e.g. 8,16,64)")
  print(table(frames, [_layer(s) for s in FLAGS.layers], FLAGS.reps))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

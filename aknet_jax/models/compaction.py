"""Two-stage schedule, stage 1 -> 2: AK-Net variables from a trained backbone's.

F is copied from the backbone up to the split; Q's 1D kernels are the 2D kernels of the later stages
summed over their width axis, with their BN parameters and statistics copied; the heatmap, transform
net and both heads start fresh.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_COLLECTIONS = ("params", "batch_stats")


def compact_kernel(kernel: jax.Array) -> jax.Array:
  """HWIO (kh, kw, I, O) -> (kh, I, O): a 1D conv over a sequence along the kernel's height axis.

  Equals the 2D conv on the sequence laid out along H and repeated across a window of kw columns.
  """
  if kernel.ndim != 4:
    raise ValueError(f"compact_kernel: expected an HWIO kernel (kh, kw, I, O), got {kernel.shape}")
  return jnp.sum(kernel, axis=1)


def _source_path(path: tuple) -> tuple | None:
  """Where a stage-2 variable comes from in the stage-1 tree (None: freshly initialised)."""
  if path[0] == "backbone":
    return path
  if path[0] == "points":
    return ("backbone",) + path[1:]
  return None


def compact(stage1_variables: Any, model: nn.Module, input_shape: tuple, rng: jax.Array, *,
            compact_q: bool = True) -> dict:
  """Stage-1 VideoNet variables {'params', 'batch_stats'} -> the variables of AK-Net `model`.

  `input_shape`: one clip as the model takes it. Raises ValueError naming the first stage-1 path
  that is missing or has the wrong shape.
  """
  stage1 = flax.core.unfreeze(stage1_variables)
  if "params" not in stage1 or "backbone" not in stage1["params"]:
    raise ValueError("compact: stage-1 variables need params['backbone'] (a VideoNet's variables); "
                     f"got keys {sorted(stage1)}, params keys {sorted(stage1.get('params', {}))}")
  frames = jnp.zeros(input_shape, jnp.float32)
  shapes = jax.eval_shape(lambda r: model.init(r, frames, train=False), rng)
  bb = model.backbone
  copied = {}
  for coll in _COLLECTIONS:
    src = traverse_util.flatten_dict(stage1.get(coll, {}))
    dst = {}
    for path, leaf in traverse_util.flatten_dict(flax.core.unfreeze(shapes[coll])).items():
      src_path = _source_path(path)
      if src_path is None or (path[0] == "points" and not compact_q):
        continue
      folded = path[0] == "points" and path[-1] == "kernel"
      want = (leaf.shape[:1] + leaf.shape[:1] + leaf.shape[1:]) if folded else leaf.shape
      name = f"{coll}/{'/'.join(src_path)}"
      if src_path not in src:
        raise ValueError(f"compact: the stage-1 variables lack {name} (expected shape {want}); "
                         f"they do not fit this config (model.backbone={bb.backbone!r}, "
                         f"depth={bb.depth}, width={bb.width}, aknet.split={model.split!r})")
      value = jnp.asarray(src[src_path])
      if folded and value.ndim == 4:
        value = compact_kernel(value)
      if value.shape != leaf.shape:
        raise ValueError(f"compact: stage-1 {name} has shape {np.shape(src[src_path])}, expected "
                         f"{want} for this config (model.depth={bb.depth}, width={bb.width})")
      dst[path] = value.astype(leaf.dtype)
    copied[coll] = traverse_util.unflatten_dict(dst)
  # Applying with mutable collections creates only the missing (new) variables, from `rng`.
  _, variables = jax.jit(lambda v, r: model.apply(v, frames, train=False, rngs={"params": r},
                                                  mutable=list(_COLLECTIONS)))(copied, rng)
  return {coll: flax.core.unfreeze(variables[coll]) for coll in _COLLECTIONS}

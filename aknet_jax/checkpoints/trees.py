"""The one check that a tree of arrays fits another: same array paths, same shapes."""

from __future__ import annotations

import jax
import numpy as np


def path_name(path) -> str:
  """A key path as 'params/backbone/conv1/kernel' (dict keys, sequence indices, attribute names
  alike, so a stored tree and the in-memory one it came from name their arrays the same)."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def shapes_by_path(tree) -> dict[str, tuple]:
  """{path name: shape} of a tree's arrays (ShapeDtypeStructs and array metadata count too)."""
  return {path_name(p): tuple(getattr(x, "shape", np.shape(x)))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if x is not None}


def check_fits(have, want, where: str, what: str = "variables") -> None:
  """One-line ValueError at the first array of `want` that `have` lacks or holds in another shape:
  the tree was written for another configuration, which is not damage."""
  have_shapes = shapes_by_path(have)
  for name, shape in shapes_by_path(want).items():
    if name not in have_shapes:
      raise ValueError(f"checkpoint {where} lacks {what} {name} that the config's model needs: it "
                       "was written for another configuration; pass the config it was trained with")
    if have_shapes[name] != shape:
      raise ValueError(f"checkpoint {where} holds {what} of other shapes than the config's model "
                       f"({name}: {have_shapes[name]} vs {shape}): it was written for another "
                       "configuration; pass the config it was trained with")

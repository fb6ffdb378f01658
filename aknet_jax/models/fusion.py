"""`unfused(fn, *args)`: fn's outputs as buffers that XLA:CPU cannot fuse into their consumers.

XLA fuses a cheap-looking elementwise producer into each consumer, recomputing it there. That is
wrong for a long comparison chain read by many consumers (the stem max-pool's nine-tap argmax,
recomputed for every window its backward touches). `lax.optimization_barrier` does not stop it:
XLA:CPU removes barriers before fusion. A conditional's branch is a computation of its own whose
results are buffers, so fn runs in one (both branches fn, the predicate always decided at run
time). CPU only: elsewhere, and in `winograd.direct_form` (MAC counting), fn runs inline.
"""

from __future__ import annotations

import jax

from aknet_jax.models import winograd


def unfused(fn, *args):
  """fn(*args), computed on its own on CPU (its results materialised once, not recomputed)."""
  def cpu(*args):
    leaf = jax.tree.leaves(args)[0].ravel()[0]
    # Both branches are fn; the predicate only has to be unknown at compile time (NaN: false).
    return jax.lax.cond(leaf == leaf, fn, fn, *args)

  return winograd.cpu_or_default(cpu, fn, *args)

"""`models.hlo_flops`: XLA's flop count from the HLO on the host CPU backend, the one count behind
the MACs columns and the training step's TFLOP/s and MFU on every backend."""

import jax
import jax.numpy as jnp
import numpy as np

from aknet_jax import models


def test_counts_a_matmul_as_two_flops_per_multiply_add():
  x = jax.ShapeDtypeStruct((8, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((32, 16), jnp.float32)
  assert models.hlo_flops(lambda a, b: a @ b, x, w) == 2 * 8 * 32 * 16


def test_counts_under_a_one_device_pmap_with_collectives_and_concrete_arrays():
  """The training step's form: pmapped with a named axis (pmean), fed arrays, leading axis 1."""
  x, w = np.ones((1, 4, 64), np.float32), np.ones((1, 64, 64), np.float32)
  flops = models.hlo_flops(lambda a, b: jax.lax.pmean(a @ b, "batch"), x, w, axis_name="batch")
  assert flops >= 2 * 4 * 64 * 64 and flops < 2 * 4 * 64 * 64 * 1.1

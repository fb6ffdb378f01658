"""The keypoint heatmap: squeeze-excitation with a softmax over channels."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class SEHeatmap(nn.Module):
  """X (B, T, h, w, C) -> H (B, T, h, w) float32 = sum_c softmax_c(W2 relu(W1 mean_hw X))_c X_c.

  The softmax weights sum to 1 over C, so H is a convex mix of the (post-ReLU) channels.
  """
  reduction: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    z = jnp.mean(x.astype(jnp.float32), axis=(2, 3))
    z = nn.relu(nn.Dense(max(c // self.reduction, 1), dtype=self.dtype, name="fc1")(z))
    z = nn.Dense(c, dtype=self.dtype, name="fc2")(z)
    weights = nn.softmax(z.astype(jnp.float32), axis=-1)
    return jnp.einsum("bthwc,btc->bthw", x.astype(jnp.float32), weights)

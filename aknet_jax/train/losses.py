"""Training losses: cross-entropy; for AK-Net also the aux head's and the heatmap regulariser.

Weight decay is not here: the optimiser adds it (coupled L2, as PyTorch SGD).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of (B, K) logits against integer labels (B,)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return jnp.mean(ce)


def heatmap_regularizer(heatmap: jax.Array) -> jax.Array:
  """r_e = mean of 4 H (1 - H) over a [0, 1] heatmap: 0 at a binary map, 1 at H = 1/2 everywhere."""
  heatmap = heatmap.astype(jnp.float32)
  return jnp.mean(4.0 * heatmap * (1.0 - heatmap))


def compute_loss(outputs: dict, labels: jax.Array, config: ml_collections.ConfigDict):
  """Train-mode model outputs -> (scalar loss, metrics dict of scalars).

  Backbone (stage 1, outputs {'logits'}): CE; metrics 'ce', 'loss'.
  AK-Net (outputs also 'aux_logits', 'heatmap'): (CE + CE_aux) / 2 + reg_weight * r_e (without
  the aux head, CE + reg_weight * r_e);
  metrics 'ce', 'aux_ce', 'r_e', 'loss', and Ĥ's share of cells near 0 and near 1
  ('heatmap_near0' / 'heatmap_near1', < 0.05 / > 0.95): a heatmap collapsed to one spike has
  r_e -> 0 with near0 -> 1 and near1 -> 0, a binary one near0 + near1 = 1.
  """
  ce = cross_entropy(outputs["logits"], labels)
  if "heatmap" not in outputs:
    return ce, {"ce": ce, "loss": ce}
  r_e = heatmap_regularizer(outputs["heatmap"])
  metrics = {"ce": ce, "r_e": r_e}
  if "aux_logits" in outputs:
    metrics["aux_ce"] = aux_ce = cross_entropy(outputs["aux_logits"], labels)
    loss = 0.5 * (ce + aux_ce) + config.model.aknet.reg_weight * r_e
  else:  # model.aknet.aux_head off: the heatmap learns only through r_e.
    loss = ce + config.model.aknet.reg_weight * r_e
  heat = outputs["heatmap"].astype(jnp.float32)
  return loss, {**metrics, "loss": loss,
                "heatmap_near0": jnp.mean((heat < 0.05).astype(jnp.float32)),
                "heatmap_near1": jnp.mean((heat > 0.95).astype(jnp.float32))}

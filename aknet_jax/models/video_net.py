"""TSN classifier: backbone -> global average pool -> dropout -> `new_fc` -> mean of logits over T."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from aknet_jax.models.backbone import VideoBackbone


class VideoNet(nn.Module):
  """Per-frame logits averaged over the T segments (TSN 'avg' consensus before softmax)."""
  config: ml_collections.ConfigDict
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, frames, *, train: bool):
    """frames (B, T*L, H, W, 3) -> logits (B, K) float32; a dict {'logits': ...} when training."""
    config = self.config
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    x = VideoBackbone(config, self.bn_axis_name, name="backbone")(frames, train=train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dropout(config.model.dropout, deterministic=not train)(x)
    x = nn.Dense(config.dataset.num_classes, dtype=dtype,
                 kernel_init=nn.initializers.normal(0.001), name="new_fc")(x)
    logits = x.astype(jnp.float32).reshape((frames.shape[0], config.dataset.num_segments, -1))
    logits = jnp.mean(logits, axis=1)
    return {"logits": logits} if train else logits

"""TSN classifier: backbone -> global average pool -> dropout -> `new_fc` -> mean of logits over T."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from aknet_jax.models.backbone import VideoBackbone


class VideoNet(nn.Module):
  """Per-frame logits averaged over the T segments (TSN 'avg' consensus before softmax)."""
  backbone: VideoBackbone
  num_classes: int
  dropout: float = 0.5

  @nn.compact
  def __call__(self, frames, *, train: bool):
    """frames (B, T*L, H, W, 3) -> logits (B, K) float32; a dict {'logits': ...} when training."""
    x = self.backbone(frames, train=train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.backbone.dtype,
                 kernel_init=nn.initializers.normal(0.001), name="new_fc")(x)
    logits = x.astype(jnp.float32).reshape((frames.shape[0], self.backbone.num_segments, -1))
    logits = jnp.mean(logits, axis=1)
    return {"logits": logits} if train else logits

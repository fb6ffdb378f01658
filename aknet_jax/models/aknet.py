"""AK-Net: backbone F up to the split, keypoint heatmap and selection, transform T, point sub-net Q.

Design §1. Training returns the auxiliary head's logits and the normalised heatmap for the loss;
inference never builds the auxiliary branch (it only exists to train the heatmap).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from aknet_jax.models import keypoints
from aknet_jax.models import resnet
from aknet_jax.models.backbone import VideoBackbone
from aknet_jax.models.batch_norm import BatchNorm
from aknet_jax.models.heatmap import SEHeatmap
from aknet_jax.models.point_net import PointNet
from aknet_jax.models.transform_net import TransformNet

_head_init = nn.initializers.normal(0.001)


class AuxHead(nn.Module):
  """Training-only classifier on the heatmap-weighted features (design §1.9)."""
  num_classes: int
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x (B, T, h, w, C) -> logits (B, K) float32."""
    b, t, h, w, c = x.shape
    conv = functools.partial(nn.Conv, c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             use_bias=False, dtype=self.dtype)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, axis_name=self.bn_axis_name, dtype=self.dtype,
                             use_fast_variance=False)
    y = x.reshape(b * t, h, w, c).astype(self.dtype)
    y = nn.relu(norm(name="bn1")(conv(name="conv1")(y)))
    y = nn.relu(norm(name="bn2")(conv(name="conv2")(y)))
    y = jnp.mean(y.astype(jnp.float32).reshape(b, t, -1, c), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_head_init, name="fc")(y)


class AKNet(nn.Module):
  """frames (B, T*L, H, W, 3) -> logits (B, K) float32 (train=False).

  train=True -> {'logits', 'aux_logits', 'heatmap' (normalised, (B, T, h, w))};
  return_keypoints=True (inference) -> (logits, {'xyt' int32 (B, N, 3) ranked, 'heatmap'}).
  """
  config: ml_collections.ConfigDict
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, frames, *, train: bool, return_keypoints: bool = False):
    cfg, ak = self.config, self.config.model.aknet
    dtype = jnp.bfloat16 if cfg.half_precision else jnp.float32
    t = cfg.dataset.num_segments
    split = resnet.STAGES.index(ak.split)

    x = VideoBackbone(cfg, self.bn_axis_name, name="backbone")(frames, train=train, upto=ak.split)
    bt, h, w, c = x.shape
    x = x.reshape(bt // t, t, h, w, c)

    heat = SEHeatmap(ak.se_reduction, dtype=dtype, name="heatmap")(x)
    heat_norm = keypoints.normalize_heatmap(heat)
    n = keypoints.num_points(ak.alpha, t, h, w)
    points, xyt = keypoints.select_and_rank(heat, x, n, keypoints.default_tau(ak.tau, h, w))
    coords = keypoints.normalize_coordinates(xyt)

    points = TransformNet(ak.transform_mode, ak.transform_rank, cfg.model.bn_momentum,
                          self.bn_axis_name, dtype, name="transform")(points, coords, train=train)
    points = PointNet(resnet.STAGE_SIZES[cfg.model.depth], split + 1, cfg.model.width,
                      bottleneck=cfg.model.depth >= 50, use_bias=cfg.model.backbone == "tdn",
                      bn_momentum=cfg.model.bn_momentum, bn_axis_name=self.bn_axis_name,
                      dtype=dtype, name="points")(points, train=train)

    g = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    e = jnp.mean(points.astype(jnp.float32), axis=1)
    z = nn.Dropout(cfg.model.dropout, deterministic=not train)(jnp.concatenate([g, e], axis=-1))
    logits = nn.Dense(cfg.dataset.num_classes, dtype=dtype, kernel_init=_head_init,
                      name="head")(z).astype(jnp.float32)

    if train or self.is_mutable_collection("params"):  # Inits (and compaction) create it.
      aux_logits = AuxHead(cfg.dataset.num_classes, cfg.model.bn_momentum, self.bn_axis_name, dtype,
                           name="aux")(heat_norm[..., None] * x, train=train)
    if train:
      return {"logits": logits, "aux_logits": aux_logits, "heatmap": heat_norm}
    if return_keypoints:
      return logits, {"xyt": xyt, "heatmap": heat_norm}
    return logits

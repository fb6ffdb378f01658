"""AK-Net: backbone F up to the split, keypoint heatmap and selection, transform T, point sub-net Q.

Each step is a method (`features`, `select_keypoints`, `transform_points`, `point_features`,
`classify`), so tools can run one alone with `model.apply(variables, ..., method=...)`. Training
also returns the auxiliary head's logits and the normalised heatmap for the loss; inference never
builds the auxiliary branch (it only exists to train the heatmap).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from aknet_jax.models import conv as conv_lib
from aknet_jax.models import keypoints
from aknet_jax.models import resnet
from aknet_jax.models.backbone import VideoBackbone
from aknet_jax.models.batch_norm import norm_layer
from aknet_jax.models.heatmap import SEHeatmap
from aknet_jax.models.point_net import PointNet
from aknet_jax.models.transform_net import TransformNet

_head_init = nn.initializers.normal(0.001)


class AuxHead(nn.Module):
  """Training-only classifier on the heatmap-weighted features: 2 x (3x3 s2 conv, BN, ReLU), GAP."""
  num_classes: int
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x (B, T, h, w, C) -> logits (B, K) float32."""
    b, t, h, w, c = x.shape
    conv = functools.partial(conv_lib.Conv, c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             use_bias=False, dtype=self.dtype)
    norm = norm_layer(train=train, momentum=self.bn_momentum, axis_name=self.bn_axis_name,
                      dtype=self.dtype)
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
  backbone: VideoBackbone
  num_classes: int
  dropout: float = 0.5
  split: str = "res4"
  alpha: float = 0.3
  tau: float = -1.0  # <= 0: h + w of the split's map (each frame's points stay contiguous).
  transform_mode: str = "full"
  transform_rank: int = 64
  se_reduction: int = 16
  point_stride: str = "same"  # Q's stride-2 blocks: 'same' halves the points, 'squared' quarters.
  ranking: str = "xyt"  # Point order: 'xyt' (paper), 'score' (top-k order), 'random' (control).
  concat_global: bool = True  # Head on concat(GAP(X), e) (paper) or on e alone.
  position_embedding: bool = False  # Add a learned embedding of the normalised (x, y, t).
  aux_head: bool = True  # Off: no auxiliary loss; the heatmap learns only through r_e.

  def setup(self):
    bb = self.backbone
    self.heatmap = SEHeatmap(self.se_reduction, dtype=bb.dtype)
    self.transform = TransformNet(self.transform_mode, self.transform_rank, bb.bn_momentum,
                                  bb.bn_axis_name, bb.dtype)
    self.points = PointNet(resnet.STAGE_SIZES[bb.depth], resnet.STAGES.index(self.split) + 1,
                           bb.width, bottleneck=resnet.expansion(bb.depth) == 4,
                           use_bias=bb.backbone == "tdn", bn_momentum=bb.bn_momentum,
                           bn_axis_name=bb.bn_axis_name, dtype=bb.dtype,
                           point_stride=self.point_stride, backbone=bb.backbone)
    self.head_dropout = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.num_classes, dtype=bb.dtype, kernel_init=_head_init)
    if self.aux_head:
      self.aux = AuxHead(self.num_classes, bb.bn_momentum, bb.bn_axis_name, bb.dtype)
    if self.position_embedding:
      self.position = nn.Dense(resnet.stage_channels(bb.depth, bb.width)[self.split],
                               dtype=bb.dtype, kernel_init=nn.initializers.normal(0.02))

  def features(self, frames, *, train: bool = False):
    """F: frames -> X (B, T, h, w, C) after the split stage."""
    x = self.backbone(frames, train=train, upto=self.split)
    bt, h, w, c = x.shape
    return x.reshape(bt // self.backbone.num_segments, self.backbone.num_segments, h, w, c)

  def select_keypoints(self, x):
    """X -> (points (B, N, C), normalised coordinates (B, N, 3), xyt int32, Ĥ (B, T, h, w)).

    Heatmap, joint top-k over the clip's T*h*w cells, gather, ranking by x + y + tau*t.
    """
    t, h, w = x.shape[1:4]
    heat = self.heatmap(x)
    n = keypoints.num_points(self.alpha, t, h, w)
    points, xyt = keypoints.select_and_rank(heat, x, n, keypoints.default_tau(self.tau, h, w),
                                            self.ranking)
    coords = keypoints.normalize_coordinates(xyt)
    if self.position_embedding:  # Table V's "learnable embedding" of the point positions.
      points = points + self.position(coords).astype(points.dtype)
    return points, coords, xyt, keypoints.normalize_heatmap(heat)

  def transform_points(self, points, coords, *, train: bool = False):
    """T: the first C channels of concat(points, coords) @ A."""
    return self.transform(points, coords, train=train)

  def point_features(self, points, *, train: bool = False):
    """Q: the stages after the split as 1D convs over the ranked points."""
    return self.points(points, train=train)

  def classify(self, x, q, *, train: bool = False):
    """Logits (B, K) float32 of concat(GAP(X), mean of Q's points)."""
    g = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    e = jnp.mean(q.astype(jnp.float32), axis=1)
    z = jnp.concatenate([g, e], axis=-1) if self.concat_global else e
    z = self.head_dropout(z, deterministic=not train)
    return self.head(z).astype(jnp.float32)

  def __call__(self, frames, *, train: bool, return_keypoints: bool = False):
    x = self.features(frames, train=train)
    points, coords, xyt, heat_norm = self.select_keypoints(x)
    points = self.transform_points(points, coords, train=train)
    logits = self.classify(x, self.point_features(points, train=train), train=train)
    out = {"logits": logits, "heatmap": heat_norm}
    if self.aux_head and (train or self.is_mutable_collection("params")):  # Init, compaction too.
      out["aux_logits"] = self.aux(heat_norm[..., None] * x, train=train)
    if train:
      return out
    if return_keypoints:
      return logits, {"xyt": xyt, "heatmap": heat_norm}
    return logits

"""PointNet-style transform net T: predicts a (C+3)x(C+3) channel mix of the points (the paper's T).

Modes: 'full' (the paper: A = I + f(z), a dense layer predicts all of f, PointNet's form),
'lowrank' (A = I + U V^T, rank r), 'none' (the ablation without T: the features pass unchanged).
Both add the identity in the forward and zero-initialise the last layer, so A = I at init and weight
decay on the predicting layer pulls A toward I, not toward 0.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from aknet_jax.models import conv as conv_lib
from aknet_jax.models import wide_dense
from aknet_jax.models.batch_norm import norm_layer

MODES = ("full", "lowrank", "none")


class TransformNet(nn.Module):
  """(S (B, N, C), D' (B, N, 3)) -> P~ (B, N, C): the first C channels of concat(S, D') @ A."""
  mode: str = "full"
  rank: int = 64
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, s, d, *, train: bool):
    if self.mode not in MODES:
      raise ValueError(f"config.model.aknet.transform_mode: {self.mode!r} is not one of {MODES}")
    if self.mode == "none":
      return s
    c = s.shape[-1]
    c3 = c + 3
    conv = functools.partial(conv_lib.Conv, kernel_size=(1,), dtype=self.dtype)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = norm_layer(train=train, momentum=self.bn_momentum, axis_name=self.bn_axis_name,
                      dtype=self.dtype)
    p = jnp.concatenate([s.astype(self.dtype), d.astype(self.dtype)], axis=-1)
    z = p
    for i, features in enumerate((64, 128, 1024), start=1):
      z = nn.relu(norm(name=f"bn{i}")(conv(features, name=f"conv{i}")(z)))
    z = jnp.max(z, axis=1)
    z = nn.relu(norm(name="bn4")(dense(512, name="fc1")(z)))
    z = nn.relu(norm(name="bn5")(dense(256, name="fc2")(z)))
    if self.mode == "full":
      f = wide_dense.WideDense(c3 * c3, kernel_init=nn.initializers.zeros,
                               bias_init=nn.initializers.zeros, dtype=self.dtype,
                               name="fc3")(z).reshape(-1, c3, c3)
      return p[..., :c] + jnp.einsum("bnk,bkc->bnc", p, f[:, :, :c])
    wide = functools.partial(wide_dense.WideDense, c3 * self.rank, dtype=self.dtype)
    u = wide(name="fc_u")(z).reshape(-1, c3, self.rank)
    v = wide(kernel_init=nn.initializers.zeros, name="fc_v")(z).reshape(-1, c3, self.rank)
    return p[..., :c] + jnp.einsum("bnr,bcr->bnc", jnp.einsum("bnk,bkr->bnr", p, u), v[:, :c])

"""TAda2D (TAdaConv, Huang et al. ICLR 2022): the bottleneck's 3x3 conv with per-frame kernels.

Follows the official code (alibaba-mmai-research/TAdaConv: `TAda2DBlock`, `TAdaConv2d`,
`RouteFuncMLP`; config `tada2d.yaml`): every bottleneck's conv2 is a TAdaConv2d whose base kernel
W_b is calibrated per clip and frame on its input channels, W_t = alpha_t * W_b, with
alpha = 1 + b(relu(bn(a(frame_context + g(clip_context))))) from a route function of temporal
1D convs (kernels 3, 3; reduction 4; `b` zero-initialised, so alpha = 1 at start). Its output gets
the temporal feature aggregation of the TAda2D block: bn2(y) + bn2_avgpool(avgpool_t3(y)), the
second BN zero-initialised. Calibrating a kernel's input channels with a spatially constant alpha
equals scaling the input's channels, so conv2 runs as one ordinary conv on h * alpha.

Stem and stride differ from torchvision's ResNet as in the official code: the stem has no
max-pool, and layer1's first block strides by 2 (3x3 conv and shortcut) instead (backbone.py,
resnet.stage).

AK-Net's Q (compaction): the plain 1D bottleneck, conv2 = the base kernel W_b (calibration 1) and
bn2 = the main BN; the route function and the aggregation branch are dropped, as TSM's shift and
TDN's modules are: a ranked point sequence has no frame grid to take temporal context from, and
dropping them leaves the network TAda2D itself starts from (alpha = 1, aggregation BN = 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any
POINT_BLOCK = None  # Q uses the plain Bottleneck1D (see the module docstring).
ROUTE_RATIO = 4  # cfg.VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_R
ROUTE_KERNELS = (3, 3)  # cfg.VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_K
POOL_T = 3  # cfg.VIDEO.BACKBONE.BRANCH.POOL_K[0]: temporal avg-pool of the aggregation branch.


def temporal_avg_pool(x: jnp.ndarray, num_segments: int, k: int = POOL_T) -> jnp.ndarray:
  """AvgPool3d((k, 1, 1), stride 1, padding k // 2) over time, zeros counted (count_include_pad)."""
  n = x.shape[0]
  x5 = x.reshape((n // num_segments, num_segments) + x.shape[1:])
  p = k // 2
  xp = jnp.pad(x5, [(0, 0), (p, p)] + [(0, 0)] * (x5.ndim - 2))
  y = sum(xp[:, j:j + num_segments] for j in range(k)) / k
  return y.reshape(x.shape)


class RouteFunc(nn.Module):
  """Calibration weights (B*T, 1, 1, C) of a TAdaConv2d from its input (B*T, H, W, C) (official
  `RouteFuncMLP`): per-frame means plus g(clip mean) -> temporal conv a -> BN -> ReLU -> temporal
  conv b (zero init) -> + 1. a and g carry biases (zero init, as the official c2_msra_fill)."""
  num_segments: int
  conv: ModuleDef
  norm: ModuleDef
  ratio: int = ROUTE_RATIO
  kernels: Sequence[int] = ROUTE_KERNELS

  @nn.compact
  def __call__(self, x):
    n, c, t = x.shape[0], x.shape[-1], self.num_segments
    frames = jnp.mean(x, axis=(1, 2)).reshape((n // t, t, c))  # (B, T, C)
    clip = jnp.mean(frames, axis=1, keepdims=True)  # (B, 1, C): the mean over (T, H, W).
    zeros = nn.initializers.zeros
    g = self.conv(c, (1,), padding="VALID", use_bias=True, bias_init=zeros, name="g")(clip)
    ka, kb = self.kernels
    y = self.conv(c // self.ratio, (ka,), padding=((ka // 2, ka // 2),), use_bias=True,
                  bias_init=zeros, name="a")(frames + g)
    y = nn.relu(self.norm(name="bn")(y))
    y = self.conv(c, (kb,), padding=((kb // 2, kb // 2),), use_bias=False, kernel_init=zeros,
                  name="b")(y)
    return (1.0 + y).reshape((n, 1, 1, c))


def middle(block, h):
  """TAda2D's conv2 -> bn2 (+ aggregation) -> ReLU in `block`'s scope: h (B*T, H, W, planes)."""
  p, s, t = block.planes, block.strides, block.num_segments
  if h.shape[0] % t:
    raise ValueError(f"tada2d: leading axis {h.shape[0]} is not a multiple of "
                     f"config.dataset.num_segments={t} (devices must hold whole clips)")
  alpha = RouteFunc(t, block.conv, block.norm, name="conv2_rf")(h)
  y = block.conv(p, (3, 3), strides=s, padding=((1, 1), (1, 1)), name="conv2")(h * alpha)
  agg = temporal_avg_pool(y, t)
  y = block.norm(name="bn2")(y) + block.norm(scale_init=nn.initializers.zeros,
                                             name="bn2_avgpool")(agg)
  return nn.relu(y)

"""ResNet building blocks with PyTorch's padding, initialisation and BN conventions (torchvision v1.5).

Blocks carry the video backbones' temporal ops inside their residual branch: the TSM shift of the
block input before conv1 (TSM's residual shift), or TDN's mSE + learnable shift after conv1/bn1/relu
(TDN's `Bottleneck`, where `mse` and `shift` follow `relu(bn1(conv1(x)))`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from aknet_jax.models import batch_norm
from aknet_jax.models import fusion
from aknet_jax.models import tada
from aknet_jax.models import tdn
from aknet_jax.models import tea
from aknet_jax.models import winograd
from aknet_jax.models.max_pool import max_pool_3x3_s2
from aknet_jax.models.temporal_shift import temporal_shift

ModuleDef = Any

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGES = ("res2", "res3", "res4", "res5")  # == torch layer1..layer4
TEMPORAL_OPS = ("none", "tsm", "tdn", "tea", "tada2d")
# Backbones whose block replaces conv2 -> bn2 -> ReLU: fn(block, h) -> h, called in the block's scope.
MIDDLES = {"tea": tea.middle, "tada2d": tada.middle}

# He init as torchvision / FBResNet: Normal(0, sqrt(2 / (kh * kw * C_out))), not truncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_BLOCK = re.compile(r"^(layer\d+|resnext_layer1)_\d+$")
_BN = re.compile(r"^(bn\w*|downsample_bn)$")


def torch_bias_init(fan_in: int):
  """PyTorch's default conv bias init, Uniform(+-1/sqrt(fan_in)) (TDN's biases keep it)."""
  bound = 1.0 / float(fan_in) ** 0.5
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def expansion(depth: int) -> int:
  """Output channels / planes of a block: 1 for BasicBlock (18, 34), 4 for Bottleneck (50, 101)."""
  if depth not in STAGE_SIZES:
    raise ValueError(f"config.model.depth: {depth!r} is not one of {tuple(STAGE_SIZES)}")
  return 1 if depth < 50 else 4


def stage_channels(depth: int, width: int) -> dict:
  """Output channels of each stage, e.g. width 64, depth 50 -> res2 256 ... res5 2048."""
  e = expansion(depth)
  return {s: width * 2**i * e for i, s in enumerate(STAGES)}


def stage_strides() -> dict:
  """Total stride of each stage's output w.r.t. the input image."""
  return {s: 4 * 2**i for i, s in enumerate(STAGES)}


def is_frozen_bn_path(path_tuple) -> bool:
  """True for the params of a BatchNorm that partial BN freezes: every backbone BN but stem `bn1`.

  Those are BNs inside a residual block (`layerL_b`, `resnext_layer1_b`, their `mse`) and TDN's
  difference-stem `bn1_5`. Accepts string names or JAX key-path entries.
  """
  names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path_tuple]
  for i, name in enumerate(names):
    if name == "bn1_5":
      return True
    if _BN.match(name) and any(_BLOCK.match(n) for n in names[:i]):
      return True
  return False


def _downsample_conv(x, out_ch, strides, conv):
  """The shortcut's 1x1 strided conv (torch `downsample.0`); its BN is `downsample_bn`."""
  return conv(out_ch, (1, 1), strides=strides, padding="VALID",
              bias_init=torch_bias_init(x.shape[-1]), name="downsample_conv")(x)


def residual_end(h, bn, shortcut, shortcut_bn=None):
  """relu(bn(h) + shortcut), the shortcut through `shortcut_bn` where the block has one.

  At inference on CPU the BNs, the sum and the ReLU run in one unfused pass from the raw conv
  outputs (`fusion.unfused`): inline, XLA:CPU also fused each block's output into the next block's
  sum, so every block recomputed its stage's residual chain from the first block on (res4's last
  block re-read 7 conv outputs; docs/benchmarks.md, "thirteenth session"). Same operations, so
  the same values. Elsewhere (GPU, TPU, exports for several platforms) the inline form.
  """
  affines = [batch_norm.frozen_affine(b) for b in (bn, shortcut_bn) if b is not None]
  if not (winograd.cpu_only() and all(affines)):
    return nn.relu(bn(h) + (shortcut if shortcut_bn is None else shortcut_bn(shortcut)))
  (f, fa), rest = affines[0], affines[1:]

  def end(h, fa, shortcut, ga):
    return nn.relu(f(h, *fa) + (rest[0][0](shortcut, *ga) if rest else shortcut))

  return fusion.unfused(end, h, fa, shortcut, rest[0][1] if rest else ())


class BasicBlock(nn.Module):
  """Two 3x3 convs (stride on the first) for ResNet-18/34; TSM shifts the branch input."""
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  temporal: str = "none"
  num_segments: int = 1
  shift_div: int = 8
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x):
    if self.temporal not in ("none", "tsm"):
      raise ValueError(f"BasicBlock supports temporal ops ('none', 'tsm'), got {self.temporal!r}")
    s, cin = self.strides, x.shape[-1]
    h = temporal_shift(x, self.num_segments, self.shift_div) if self.temporal == "tsm" else x
    h = self.conv(self.planes, (3, 3), strides=s, padding=((1, 1), (1, 1)),
                  bias_init=torch_bias_init(cin * 9), name="conv1")(h)
    h = nn.relu(self.norm(name="bn1")(h))
    h = self.conv(self.planes, (3, 3), padding=((1, 1), (1, 1)),
                  bias_init=torch_bias_init(self.planes * 9), name="conv2")(h)
    if s != 1 or cin != self.planes:
      return residual_end(h, self.norm(name="bn2"), _downsample_conv(x, self.planes, s, self.conv),
                          self.norm(name="downsample_bn"))
    return residual_end(h, self.norm(name="bn2"), x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, v1.5) -> 1x1 bottleneck for ResNet-50/101, with TSM or TDN temporal ops."""
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  temporal: str = "none"
  num_segments: int = 1
  shift_div: int = 8
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x):
    if self.temporal not in TEMPORAL_OPS:
      raise ValueError(f"Bottleneck temporal op {self.temporal!r} is not one of {TEMPORAL_OPS}")
    s, cin, out_ch = self.strides, x.shape[-1], self.planes * 4
    h = temporal_shift(x, self.num_segments, self.shift_div) if self.temporal == "tsm" else x
    mid = tea.mid_width(self.planes) if self.temporal == "tea" else self.planes  # Res2Net 26w x 4s.
    h = self.conv(mid, (1, 1), padding="VALID", bias_init=torch_bias_init(cin),
                  name="conv1")(h)
    h = nn.relu(self.norm(name="bn1")(h))
    if self.temporal == "tdn":
      h = tdn.MSE(self.num_segments, self.conv, self.norm, name="mse")(h)
      h = tdn.ShiftModule(self.num_segments, self.shift_div, name="shift")(h)
    if self.temporal in MIDDLES:
      h = MIDDLES[self.temporal](self, h)
    else:
      h = self.conv(self.planes, (3, 3), strides=s, padding=((1, 1), (1, 1)),
                    bias_init=torch_bias_init(self.planes * 9), name="conv2")(h)
      h = nn.relu(self.norm(name="bn2")(h))
    h = self.conv(out_ch, (1, 1), padding="VALID", bias_init=torch_bias_init(self.planes),
                  name="conv3")(h)
    if s != 1 or cin != out_ch:
      return residual_end(h, self.norm(name="bn3"), _downsample_conv(x, out_ch, s, self.conv),
                          self.norm(name="downsample_bn"))
    return residual_end(h, self.norm(name="bn3"), x)


def block_class(depth: int):
  """BasicBlock for depth 18/34, Bottleneck for 50/101."""
  return BasicBlock if expansion(depth) == 1 else Bottleneck


def stem(x, width, conv, norm, max_pool: bool = True):
  """conv1 7x7 s2 p3 -> bn1 -> ReLU -> max-pool 3x3 s2 p1 (-inf padding), in the caller's scope.

  max_pool=False: TAda2D's stem, which ends at the ReLU (its layer1 strides by 2 instead)."""
  x = conv(width, (7, 7), strides=2, padding=((3, 3), (3, 3)),
           bias_init=torch_bias_init(x.shape[-1] * 49), name="conv1")(x)
  x = nn.relu(norm(name="bn1")(x))
  if not max_pool:
    return x
  return max_pool_3x3_s2(x)


def stage(x, index, *, depth: int, width: int, num_segments: int, shift_div: int, conv, norm,
          temporal="none", prefix="layer"):
  """Stage `index` (0 = res2 = torch layer1) as blocks `{prefix}{index + 1}_{b}` in the caller's scope.

  TSM shifts every block, or every other block when res4 has >= 23 blocks (ResNet-101, `n_round`).
  TAda2D strides layer1's first block too (its stem has no max-pool).
  """
  sizes = STAGE_SIZES[depth]
  n_round = 2 if sizes[2] >= 23 else 1
  for b in range(sizes[index]):
    op = "none" if temporal == "tsm" and b % n_round else temporal
    x = block_class(depth)(
        planes=width * 2**index, strides=2 if (index or temporal == "tada2d") and not b else 1,
        conv=conv,
        norm=norm, temporal=op, num_segments=num_segments,
        shift_div=shift_div, name=f"{prefix}{index + 1}_{b}")(x)
  return x

"""PyTorch reference of TAda2D-ResNet, written by us after a reading of the official TAdaConv code
(alibaba-mmai-research/TAdaConv: `ResNet3D` with `Base2DStem`, `Base3DResStage`, `Base3DBlock`,
`TAda2DBlock`, `TAdaConv2d`, `RouteFuncMLP`, `BaseHead`), with its module names so that
`state_dict()` has the keys of an official checkpoint's `model_state` (`backbone.conv2.res_1.
conv_branch.b_rf.a.weight`, `head.out.weight`, ...). NCTHW 5D tensors as the official model takes.

Unlike ours, TAdaConv2d here calibrates the kernel itself (one grouped conv2d over all B*T frames,
each with its own alpha_t * W_b), and the temporal parts are Conv3d / AvgPool3d. For parity tests
only: torch is the test / convert extra.
"""

from __future__ import annotations

import numpy as np

from aknet_jax.torch_reference import torch

nn, F = torch.nn, torch.nn.functional
STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class RouteFuncMLP(nn.Module):
  """alpha (B, C, T, 1, 1) = 1 + b(relu(bn(a(avgpool_hw(x) + g(avgpool_thw(x))))))."""

  def __init__(self, c, ratio=4, kernels=(3, 3)):
    super().__init__()
    self.g = nn.Conv3d(c, c, 1)
    self.a = nn.Conv3d(c, c // ratio, (kernels[0], 1, 1), padding=(kernels[0] // 2, 0, 0))
    self.bn = nn.BatchNorm3d(c // ratio)
    self.b = nn.Conv3d(c // ratio, c, (kernels[1], 1, 1), padding=(kernels[1] // 2, 0, 0),
                       bias=False)
    nn.init.zeros_(self.b.weight)

  def forward(self, x):
    frames = F.adaptive_avg_pool3d(x, (None, 1, 1))
    clip = F.adaptive_avg_pool3d(x, 1)
    return self.b(F.relu(self.bn(self.a(frames + self.g(clip))))) + 1


class TAdaConv2d(nn.Module):
  """Per-frame 2D conv with kernel alpha_t[c_in] * W_b; W_b stored (1, 1, O, I, kh, kw)."""

  def __init__(self, cin, cout, k, stride):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(1, 1, cout, cin, k, k))
    nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
    self.stride, self.padding = stride, k // 2

  def forward(self, x, alpha):
    b, c, t, h, w = x.shape
    # (B, C, T, 1, 1) -> (B, T, 1, C, 1, 1): one kernel per (clip, frame), input channels scaled.
    weight = alpha.permute(0, 2, 1, 3, 4).unsqueeze(2) * self.weight
    weight = weight.reshape(-1, c, *self.weight.shape[-2:])
    frames = x.permute(0, 2, 1, 3, 4).reshape(1, b * t * c, h, w)
    y = F.conv2d(frames, weight, stride=self.stride, padding=self.padding, groups=b * t)
    return y.view(b, t, -1, y.shape[-2], y.shape[-1]).permute(0, 2, 1, 3, 4)


class TAda2DBlock(nn.Module):
  """The bottleneck branch: a/a_bn/ReLU -> b (TAdaConv2d, b_rf) -> b_bn + b_avgpool_bn(avgpool_t)
  -> ReLU -> c/c_bn."""

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.a = nn.Conv3d(cin, planes, 1, bias=False)
    self.a_bn = nn.BatchNorm3d(planes)
    self.b = TAdaConv2d(planes, planes, 3, stride)
    self.b_rf = RouteFuncMLP(planes)
    self.b_bn = nn.BatchNorm3d(planes)
    self.b_avgpool = nn.AvgPool3d((3, 1, 1), stride=1, padding=(1, 0, 0))
    self.b_avgpool_bn = nn.BatchNorm3d(planes)
    nn.init.zeros_(self.b_avgpool_bn.weight)
    self.c = nn.Conv3d(planes, 4 * planes, 1, bias=False)
    self.c_bn = nn.BatchNorm3d(4 * planes)

  def forward(self, x):
    x = F.relu(self.a_bn(self.a(x)))
    x = self.b(x, self.b_rf(x))
    x = F.relu(self.b_bn(x) + self.b_avgpool_bn(self.b_avgpool(x)))
    return self.c_bn(self.c(x))


class ResBlock(nn.Module):
  """relu(short_cut_bn(short_cut(x)) or x, + conv_branch(x))."""

  def __init__(self, cin, planes, stride):
    super().__init__()
    if stride != 1 or cin != 4 * planes:
      self.short_cut = nn.Conv3d(cin, 4 * planes, 1, stride=(1, stride, stride), bias=False)
      self.short_cut_bn = nn.BatchNorm3d(4 * planes)
    self.conv_branch = TAda2DBlock(cin, planes, stride)

  def forward(self, x):
    skip = self.short_cut_bn(self.short_cut(x)) if hasattr(self, "short_cut") else x
    return F.relu(skip + self.conv_branch(x))


class ResStage(nn.Module):
  """Blocks `res_1` .. `res_n`; the first strides (every stage strides, layer1 included)."""

  def __init__(self, cin, planes, n):
    super().__init__()
    for i in range(n):
      self.add_module(f"res_{i + 1}", ResBlock(cin if i == 0 else 4 * planes, planes,
                                               2 if i == 0 else 1))
    self.n = n

  def forward(self, x):
    for i in range(self.n):
      x = getattr(self, f"res_{i + 1}")(x)
    return x


class Stem(nn.Module):
  """Base2DStem: a (1x7x7 conv, stride (1, 2, 2)) -> a_bn -> ReLU; no max-pool."""

  def __init__(self, width):
    super().__init__()
    self.a = nn.Conv3d(3, width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
    self.a_bn = nn.BatchNorm3d(width)

  def forward(self, x):
    return F.relu(self.a_bn(self.a(x)))


class ResNet3D(nn.Module):
  """conv1 (stem), conv2 .. conv5 (= torchvision layer1 .. layer4)."""

  def __init__(self, width, depth=50):
    super().__init__()
    if depth not in STAGE_SIZES:
      raise ValueError(f"TAda2D depth {depth!r}: the reference has {sorted(STAGE_SIZES)}")
    self.conv1 = Stem(width)
    cin = width
    for i, n in enumerate(STAGE_SIZES[depth]):
      planes = width * 2**i
      self.add_module(f"conv{i + 2}", ResStage(cin, planes, n))
      cin = 4 * planes

  def forward(self, x):
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
      x = getattr(self, name)(x)
    return x


class Head(nn.Module):
  """BaseHead: global average pool over (T, H, W) -> `out` (its eval-mode softmax left out)."""

  def __init__(self, dim, k):
    super().__init__()
    self.out = nn.Linear(dim, k)

  def forward(self, x):
    return self.out(x.mean((2, 3, 4)))


class TAda2DNet(nn.Module):
  """`backbone` + `head`: (B, 3, T, H, W) -> logits (B, K)."""

  def __init__(self, width, k, depth=50):
    super().__init__()
    self.backbone = ResNet3D(width, depth)
    self.head = Head(32 * width, k)

  def forward(self, x):
    if isinstance(x, np.ndarray):
      x = torch_frames(x)
    return self.head(self.backbone(x))


def torch_frames(frames):
  """Our clips (B, T, H, W, 3) -> the official input (B, 3, T, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(frames).transpose(0, 4, 1, 2, 3)))


def randomize(net, seed: int):
  """Random BN affine params / running stats and route-function / calibration weights, so that
  alpha != 1 and the aggregation branch contributes (they start at 1 and 0)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm3d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
      if isinstance(m, RouteFuncMLP):
        m.b.weight.copy_(torch.randn(m.b.weight.shape, generator=g) * 0.2)
  return net


def tada2d(depth: int, width: int, k: int, seed: int):
  """A `TAda2DNet` with seeded torch-default weights, then `randomize(seed + 1)`."""
  torch.manual_seed(seed)
  return randomize(TAda2DNet(width, k, depth), seed + 1)

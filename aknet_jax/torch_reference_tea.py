"""PyTorch reference of TEA-ResNet-50, written by us from the TEA paper and a reading of the
official code (Phoenix1327/tea-action-recognition, ops/tea50_8f.py), with its module names, so
its state dict has the keys of an official TEA checkpoint once wrapped in `torch_reference.TSN`
(`module.base_model.layer1.0.me.conv1.weight`, `...shifts.3.conv.weight`, `module.new_fc.*`).

Differences from the official code, none at base width 64: the temporal conv covers all channels of
a split (the official one covers 2 * (width // 2), so it fails on odd widths), T is a parameter
(hard-coded 8 or 16 there), ME keeps >= 1 channel (c // 16 is 0 at base widths under 16), and
features are globally averaged (AvgPool2d(7) there, the same at 224 px). For parity tests only:
torch is the test / convert extra, never needed to train.
"""

from __future__ import annotations

import math

from aknet_jax.torch_reference import TDNShift, randomize_tdn, torch

nn, F = torch.nn, torch.nn.functional
STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ME(nn.Module):
  """Motion excitation: feature differences conv2(b)[t+1] - b[t] -> channel attention on x."""

  def __init__(self, c, t, reduction=16):
    super().__init__()
    r, self.t = max(1, c // reduction), t
    self.conv1 = nn.Conv2d(c, r, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(r)
    self.conv2 = nn.Conv2d(r, r, 3, padding=1, groups=r, bias=False)
    self.conv3 = nn.Conv2d(r, c, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x):
    b = self.bn1(self.conv1(x))
    nt, r, h, w = b.shape
    b5 = b.view(nt // self.t, self.t, r, h, w)
    cb5 = self.conv2(b).view(nt // self.t, self.t, r, h, w)
    diff = F.pad(cb5[:, 1:] - b5[:, :-1], (0, 0, 0, 0, 0, 0, 0, 1)).reshape(nt, r, h, w)
    y = self.bn3(self.conv3(F.adaptive_avg_pool2d(diff, 1)))
    return x + x * (torch.sigmoid(y) - 0.5)


class TemporalShift(TDNShift):
  """Depthwise Conv1d(3, padding 1) over time per pixel (TEA's `ShiftModule`): 'shift' starts as
  TDN's shift with n_div 2 (first half reads t+1, second half t-1), 'fixed' as the identity."""

  def __init__(self, c, t, mode):
    super().__init__(c, t, div=2)
    if mode != "shift":
      w = torch.zeros(c, 1, 3)
      w[:, 0, 1] = 1
      self.conv.weight.data.copy_(w)


class TEABlock(nn.Module):
  """Res2Net 26w x 4s bottleneck with ME after conv1 and a temporal conv before each split's conv;
  `stage` (a stage's first block): no hierarchical sum, the last split avg-pooled 3x3."""

  def __init__(self, cin, planes, stride, t, stage, scale=4):
    super().__init__()
    width = int(math.floor(planes * 26 / 64.0))
    self.width, self.scale, self.stage = width, scale, stage
    self.conv1 = nn.Conv2d(cin, width * scale, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width * scale)
    self.me = ME(width * scale, t)
    self.convs = nn.ModuleList(
        [nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(scale - 1)])
    self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(scale - 1)])
    self.shifts = nn.ModuleList([TemporalShift(width, t, "fixed") for _ in range(scale - 1)] +
                                [TemporalShift(width, t, "shift")])
    if stage:
      self.pool = nn.AvgPool2d(3, stride, 1)
    self.conv3 = nn.Conv2d(width * scale, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.downsample = None
    if stride != 1 or cin != 4 * planes:
      self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(4 * planes))

  def forward(self, x):
    h = self.me(F.relu(self.bn1(self.conv1(x))))
    parts = torch.split(h, self.width, 1)
    outs, sp = [], None
    for i in range(self.scale - 1):
      sp = parts[i] if i == 0 or self.stage else sp + parts[i]
      sp = F.relu(self.bns[i](self.convs[i](self.shifts[i](sp))))
      outs.append(sp)
    last = self.shifts[-1](parts[-1])
    outs.append(self.pool(last) if self.stage else last)
    h = self.bn3(self.conv3(torch.cat(outs, 1)))
    return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class TEANet(nn.Module):
  """TEA-ResNet: stem, layer1-4 of TEA blocks -> (B*T, 32 * width) globally averaged features."""

  def __init__(self, width, t, depth=50):
    super().__init__()
    if depth not in STAGE_SIZES:
      raise ValueError(f"TEA depth {depth!r}: the reference has {sorted(STAGE_SIZES)}")
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    cin = width
    for i, n in enumerate(STAGE_SIZES[depth]):
      planes = width * 2**i
      blocks = [TEABlock(cin if b == 0 else 4 * planes, planes, 2 if i and not b else 1, t, b == 0)
                for b in range(n)]
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      cin = 4 * planes
    self.inplanes = cin  # The feature width, named as torchvision's ResNet names it.

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.mean((2, 3))


def tea(depth: int, width: int, t: int, seed: int):
  """A `TEANet` with seeded torch-default weights, then `randomize_tdn(seed + 1)` (BNs and the
  temporal Conv1d kernels)."""
  torch.manual_seed(seed)
  return randomize_tdn(TEANet(width, t, depth), seed + 1)

"""PyTorch reference models, written by us after the official TSM / TSN code: TSM's shifted conv
wrapper (`.net`, so the keys are the official checkpoint's) and TSN's average consensus around a
torchvision ResNet; and TDN (`TDNNet`, with its `MSE` and learnable `TDNShift`), written from the
reference doc's description (sections 3.1-3.6), not from TDN's code, with TDN's attribute names so
its keys are an official TDN checkpoint's. They use torch's own conv, pooling, padding and
`F.interpolate`, sharing the doc, not the implementation, with ours. For parity tests and the
side-by-side benchmark only: torch and torchvision are the test / convert extras, never needed to
train.
"""

from __future__ import annotations

import sys
import types

import numpy as np


def import_torch():
  """(torch, torchvision). torchvision 0.28's compiled-op registrations do not load against a
  CPU torch from another build; its models never need them, so they are stubbed."""
  import torch  # pylint: disable=g-import-not-at-top
  if "torchvision" not in sys.modules:
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
  import torchvision  # pylint: disable=g-import-not-at-top
  return torch, torchvision


torch, torchvision = import_torch()


class Shifted(torch.nn.Module):
  """TSM's residual shift: 1/div of the channels from t+1, 1/div from t-1, then the conv `.net`."""

  def __init__(self, net, t: int, div: int = 8):
    super().__init__()
    self.net, self.t, self.div = net, t, div

  def forward(self, x):
    nt, c, h, w = x.shape
    x = x.view(nt // self.t, self.t, c, h, w)
    fold = c // self.div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return self.net(out.view(nt, c, h, w))


def torch_frames(frames, t: int):
  """Our clips (B, T*L, H, W, 3), segment-major, -> the torch batch (B*T, L*3, H, W): one image
  per segment, its L frames stacked on channels (L = 1: TSN / TSM; 5: TDN, as TDN reads them)."""
  frames = np.asarray(frames)
  b, tl, h, w, _ = frames.shape
  l = tl // t
  return torch.from_numpy(np.ascontiguousarray(
      frames.reshape(b * t, l, h, w, 3).transpose(0, 1, 4, 2, 3).reshape(b * t, l * 3, h, w)))


class TSN(torch.nn.Module):
  """TSN: `base_model` features per segment -> `new_fc` -> mean over the T segments."""

  def __init__(self, base_model, t: int, k: int):
    super().__init__()
    if hasattr(base_model, "fc"):  # torchvision's classifier; TDNNet ends in features.
      base_model.fc = torch.nn.Identity()
    self.base_model, self.t = base_model, t
    self.new_fc = torch.nn.Linear(base_model.inplanes, k)

  def forward(self, frames):
    """frames: NumPy (B, T*L, H, W, 3) as our models take them, or a torch (B*T, L*3, H, W)."""
    if isinstance(frames, np.ndarray):
      frames = torch_frames(frames, self.t)
    return self.new_fc(self.base_model(frames)).view(-1, self.t, self.new_fc.out_features).mean(1)


def resnet(depth: int, seed: int):
  """A torchvision ResNet with seeded random weights and BatchNorm statistics away from 0/1."""
  torch.manual_seed(seed)
  net = getattr(torchvision.models, f"resnet{depth}")()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
  return net


def make_tsm(net, t: int):
  """Wraps conv1 of every block in the shift (every other block when layer3 has >= 23 blocks)."""
  n_round = 2 if len(net.layer3) >= 23 else 1
  for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
    for i, block in enumerate(stage):
      if i % n_round == 0:
        block.conv1 = Shifted(block.conv1, t)
  return net


def official_state_dict(model) -> dict:
  """The model's tensors under the keys of an official TSM checkpoint (`module.` prefix)."""
  return {f"module.{k}": v for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# TDN, from the reference doc (sections 3.1-3.6), NCHW, official names.

nn, F = torch.nn, torch.nn.functional
TDN_STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class TDNShift(nn.Module):
  """Doc 3.6: depthwise Conv1d(k=3, p=1) over time per pixel, initialised to the shift pattern."""

  def __init__(self, c, t, div=8):
    super().__init__()
    self.t = t
    self.conv = nn.Conv1d(c, c, 3, padding=1, groups=c, bias=False)
    fold = c // div
    w = torch.zeros(c, 1, 3)
    w[:fold, 0, 2] = 1
    w[fold:2 * fold, 0, 0] = 1
    w[2 * fold:, 0, 1] = 1
    self.conv.weight.data.copy_(w)

  def forward(self, x):
    nt, c, h, w = x.shape
    x = x.view(nt // self.t, self.t, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, self.t)
    x = self.conv(x)
    return x.view(nt // self.t, h, w, c, self.t).permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)


class MSE(nn.Module):
  """Doc 3.5: long-term temporal difference module."""

  def __init__(self, c, t):
    super().__init__()
    r, self.t = c // 16, t
    self.conv1 = nn.Conv2d(c, r, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(r)
    self.conv2 = nn.Conv2d(r, r, 3, padding=1, groups=r, bias=False)
    self.conv3 = nn.Conv2d(r, c, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(c)
    self.conv3_smallscale2 = nn.Conv2d(r, r, 3, padding=1, bias=False)
    self.bn3_smallscale2 = nn.BatchNorm2d(r)
    self.conv3_smallscale4 = nn.Conv2d(r, r, 3, padding=1, bias=False)
    self.bn3_smallscale4 = nn.BatchNorm2d(r)

  def forward(self, x):
    b = self.bn1(self.conv1(x))
    nt, r, h, w = b.shape
    b5 = b.view(nt // self.t, self.t, r, h, w)
    cb5 = self.conv2(b).view(nt // self.t, self.t, r, h, w)
    fwd = F.pad(cb5[:, 1:] - b5[:, :-1], (0, 0, 0, 0, 0, 0, 0, 1)).view(nt, r, h, w)
    bwd = F.pad(cb5[:, :-1] - b5[:, 1:], (0, 0, 0, 0, 0, 0, 1, 0)).view(nt, r, h, w)
    s2 = [self.bn3_smallscale2(self.conv3_smallscale2(F.avg_pool2d(z, 2, 2))) for z in (fwd, bwd)]
    s4 = [self.bn3_smallscale4(self.conv3_smallscale4(z)) for z in (fwd, bwd)]
    ys = []
    for z, z2, z4 in zip((fwd, bwd), s2, s4):
      z2 = F.interpolate(z2, (h, w))
      ys.append(torch.sigmoid(self.bn3(self.conv3(z / 3 + z2 / 3 + z4 / 3))) - 0.5)
    return x + x * (0.5 * ys[0] + 0.5 * ys[1])


class TDNBlock(nn.Module):
  """FBResNet Bottleneck (every conv biased); with mSE + shift after conv1/bn1/relu (doc 3.4)."""

  def __init__(self, cin, planes, stride, t, temporal):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    if temporal:
      self.mse = MSE(planes, t)
      self.shift = TDNShift(planes, t)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.temporal = temporal
    self.downsample = None
    if stride != 1 or cin != 4 * planes:
      self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride),
                                      nn.BatchNorm2d(4 * planes))

  def forward(self, x):
    h = F.relu(self.bn1(self.conv1(x)))
    if self.temporal:
      h = self.shift(self.mse(h))
    h = F.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


def _tdn_layer(cin, planes, n, stride, t, temporal):
  blocks = [TDNBlock(cin, planes, stride, t, temporal)]
  blocks += [TDNBlock(4 * planes, planes, 1, t, temporal) for _ in range(n - 1)]
  return nn.Sequential(*blocks)


class TDNNet(nn.Module):
  """Doc 3.1/3.3: TDN_Net with TDN's attribute names; input (B*T, 15, H, W) -> (B*T, 32*width)
  (`conv1_temp` is unused, as in the official model, whose checkpoints carry it)."""

  def __init__(self, width, t, depth=50):
    super().__init__()
    if depth not in TDN_STAGE_SIZES:
      raise ValueError(f"TDN depth {depth!r}: the reference has {sorted(TDN_STAGE_SIZES)}")
    n1, n2, n3, n4 = TDN_STAGE_SIZES[depth]
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv1_temp = nn.Conv2d(3, width, 7, 2, 3)
    self.conv1_5 = nn.Sequential(nn.Conv2d(12, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU())
    self.resnext_layer1 = _tdn_layer(width, width, n1, 1, t, False)
    self.layer1_bak = _tdn_layer(width, width, n1, 1, t, False)
    self.layer2_bak = _tdn_layer(4 * width, 2 * width, n2, 2, t, True)
    self.layer3_bak = _tdn_layer(8 * width, 4 * width, n3, 2, t, True)
    self.layer4_bak = _tdn_layer(16 * width, 8 * width, n4, 2, t, True)
    self.alpha, self.beta = (0.5, 0.5) if t == 8 else (0.75, 0.25)
    self.inplanes = 32 * width  # The feature width, named as torchvision's ResNet names it.

  def forward(self, x):
    f = [x[:, 3 * j:3 * j + 3] for j in range(5)]
    d = torch.cat([f[1] - f[0], f[2] - f[1], f[3] - f[2], f[4] - f[3]], 1)
    s0 = F.max_pool2d(self.conv1_5(F.avg_pool2d(d, 2, 2)), 3, 2, 1)
    s1 = self.resnext_layer1(s0)
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(f[2]))), 3, 2, 1)
    x = self.alpha * x + self.beta * F.interpolate(s0, x.shape[2:])
    x = self.layer1_bak(x)
    x = self.alpha * x + self.beta * F.interpolate(s1, x.shape[2:])
    x = self.layer4_bak(self.layer3_bak(self.layer2_bak(x)))
    return x.mean((2, 3))


def randomize_tdn(net, seed: int):
  """Random BN affine params and running stats, random Conv1d (TDN's shift, TEA's temporal conv)
  kernels: parity tests then see every module's effect (all in eval mode)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
      if isinstance(m, nn.Conv1d):
        m.weight.add_(torch.randn(m.weight.shape, generator=g) * 0.3)
  return net


def tdn(depth: int, width: int, t: int, seed: int):
  """A `TDNNet` with seeded torch-default weights, then `randomize_tdn(seed + 1)`."""
  torch.manual_seed(seed)
  return randomize_tdn(TDNNet(width, t, depth), seed + 1)

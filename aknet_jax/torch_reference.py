"""PyTorch reference models, written by us after the official TSM / TSN code: TSM's shifted conv
wrapper (`.net`, so the keys are the official checkpoint's) and TSN's average consensus around a
torchvision ResNet. For parity tests and the side-by-side benchmark only: torch and torchvision
are the test / convert extras, never needed to train.
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


class TSN(torch.nn.Module):
  """TSN: `base_model` features per frame -> `new_fc` -> mean over the T segments."""

  def __init__(self, base_model, t: int, k: int):
    super().__init__()
    base_model.fc = torch.nn.Identity()
    self.base_model, self.t = base_model, t
    self.new_fc = torch.nn.Linear(base_model.inplanes, k)

  def forward(self, frames):
    """frames: NumPy (B, T, H, W, 3) as our models take them, or a torch (B*T, 3, H, W) batch."""
    if isinstance(frames, np.ndarray):
      b, t, h, w, _ = frames.shape
      frames = torch.from_numpy(np.ascontiguousarray(
          frames.reshape(b * t, h, w, 3).transpose(0, 3, 1, 2)))
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

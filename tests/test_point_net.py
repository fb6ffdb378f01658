"""Point sub-net Q: 1D blocks vs a PyTorch reference; compacted kernel vs the 2D conv (§1.7)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aknet_jax.models import compaction
from aknet_jax.models import point_net


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("length", [7, 8])
def test_compacted_kernel_1d_conv_equals_2d_conv(k, strides, length):
  """Sequence along H, repeated over the kernel's kw columns (no padding across W): equal."""
  rng = np.random.default_rng(k * 10 + strides)
  kernel = rng.normal(size=(k, k, 5, 4)).astype(np.float32)
  seq = rng.normal(size=(2, length, 5)).astype(np.float32)
  conv1d = point_net._conv1d(4, (k,), strides, name=None, use_bias=False, dtype=jnp.float32)
  got = conv1d.apply({"params": {"kernel": compaction.compact_kernel(jnp.asarray(kernel))}}, seq)
  image = np.repeat(seq[:, :, None, :], k, axis=2)  # (B, H=length, W=kw, C)
  want = jax.lax.conv_general_dilated(
      image, kernel, (strides, 1), ((k // 2, k // 2), (0, 0)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")[:, :, 0, :]
  assert got.shape == want.shape == (2, (length + strides - 1) // strides, 4)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


class _TorchBlock(torch.nn.Module):
  """Reference 1D ResNet block (bottleneck or basic) written with torch Conv1d / BatchNorm1d."""

  def __init__(self, cin, planes, stride, bottleneck, bias):
    super().__init__()
    out = planes * 4 if bottleneck else planes
    conv = lambda i, o, k, s=1: torch.nn.Conv1d(i, o, k, s, k // 2, bias=bias)
    if bottleneck:
      self.convs = torch.nn.ModuleList([conv(cin, planes, 1), conv(planes, planes, 3, stride),
                                        conv(planes, out, 1)])
    else:
      self.convs = torch.nn.ModuleList([conv(cin, planes, 3, stride), conv(planes, planes, 3)])
    self.bns = torch.nn.ModuleList([torch.nn.BatchNorm1d(c.out_channels) for c in self.convs])
    self.down = None
    if stride != 1 or cin != out:
      self.down = (conv(cin, out, 1, stride), torch.nn.BatchNorm1d(out))
    if self.down:
      self.down_conv, self.down_bn = self.down

  def forward(self, x):
    y = x
    for i, (c, b) in enumerate(zip(self.convs, self.bns)):
      y = b(c(y))
      if i < len(self.convs) - 1:
        y = torch.relu(y)
    if self.down:
      x = self.down_bn(self.down_conv(x))
    return torch.relu(x + y)


def _load(block, params, stats, bottleneck):
  """Copies the Flax block's variables into the torch block (Conv1d weight (O, I, k))."""
  names = ["conv1", "conv2", "conv3"] if bottleneck else ["conv1", "conv2"]
  pairs = [(block.convs[i], block.bns[i], n, "bn" + n[-1]) for i, n in enumerate(names)]
  if block.down:
    pairs.append((block.down_conv, block.down_bn, "downsample_conv", "downsample_bn"))
  t = lambda a: torch.tensor(np.asarray(a))
  with torch.no_grad():
    for conv, bn, cn, bnn in pairs:
      conv.weight.copy_(t(params[cn]["kernel"]).permute(2, 1, 0))
      if conv.bias is not None:
        conv.bias.copy_(t(params[cn]["bias"]))
      bn.weight.copy_(t(params[bnn]["scale"]))
      bn.bias.copy_(t(params[bnn]["bias"]))
      bn.running_mean.copy_(t(stats[bnn]["mean"]))
      bn.running_var.copy_(t(stats[bnn]["var"]))


@pytest.mark.parametrize("bottleneck,use_bias,point_stride", [
    (True, True, "same"), (False, False, "same"), (True, False, "squared"),
    (False, True, "squared")])
def test_blocks_match_torch_conv1d_reference(bottleneck, use_bias, point_stride):
  width, n = 4, 9
  s = {"same": 2, "squared": 4}[point_stride]
  cin = width * 4 * (4 if bottleneck else 1)  # res4's output channels.
  model = point_net.PointNet((1, 1, 1, 2), first_stage=3, width=width, bottleneck=bottleneck,
                             use_bias=use_bias, point_stride=point_stride)
  x = np.random.default_rng(0).normal(size=(3, n, cin)).astype(np.float32)
  variables = flax.core.unfreeze(model.init(jax.random.key(0), x, train=False))
  keys = iter(jax.random.split(jax.random.key(1), 100))
  perturb = lambda path, a: (jax.random.uniform(next(keys), a.shape, minval=0.5, maxval=1.5)
                             if path[-1].key in ("var", "scale") else
                             a + 0.1 * jax.random.normal(next(keys), a.shape))
  variables = jax.tree_util.tree_map_with_path(perturb, variables)
  assert set(variables["params"]) == {"layer4_0", "layer4_1"}
  assert "downsample_conv" in variables["params"]["layer4_0"]
  assert "downsample_conv" not in variables["params"]["layer4_1"]
  out_ch = width * 8 * (4 if bottleneck else 1)
  ref = torch.nn.Sequential(_TorchBlock(cin, width * 8, s, bottleneck, use_bias),
                            _TorchBlock(out_ch, width * 8, 1, bottleneck, use_bias)).double()
  for i, blk in enumerate(ref):
    name = f"layer4_{i}"
    _load(blk, variables["params"][name], variables["batch_stats"][name], bottleneck)
  xt = torch.tensor(x, dtype=torch.float64).permute(0, 2, 1)
  with jax.default_matmul_precision("highest"):
    got_eval = model.apply(variables, x, train=False)
    got_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  # The strided block keeps ceil(n / s) points: halves them ('same') or quarters them ('squared').
  assert got_eval.shape == (3, (n + s - 1) // s, out_ch)
  for got, mode in ((got_eval, ref.eval), (got_train, ref.train)):
    mode()
    with torch.no_grad():
      want = ref(xt).permute(0, 2, 1).numpy()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)

"""BatchNorm with PyTorch's running statistics: the running variance takes the unbiased batch
variance (n / (n - 1) times the one that normalises), as `torch.nn.BatchNorm*d` does.

Flax's `nn.BatchNorm` stores the biased one. The gap is negligible over a conv map but not where a
BN normalises a handful of clips (the transform net's fc layers: n = 8 clips per device makes the
running variance 12.5 % smaller), and it decides what a converted PyTorch model evaluates with
after fine-tuning here. Same variables as `nn.BatchNorm`, so checkpoints are unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import module as flax_module


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` (no mask) whose running variance update uses the unbiased batch variance."""

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    frozen = flax_module.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    update = not frozen and not self.is_initializing()
    before = self.get_variable("batch_stats", "var") if update else None
    y = super().__call__(x, use_running_average)
    if update:
      features = {a % x.ndim for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,))}
      n = 1
      for a in range(x.ndim):
        n *= 1 if a in features else x.shape[a]
      if self.axis_name is not None:
        n = n * jax.lax.psum(1, self.axis_name, axis_index_groups=self.axis_index_groups)
      after = self.get_variable("batch_stats", "var")
      # after = m * before + (1 - m) * biased; PyTorch puts biased * n / (n - 1) in its place.
      # (n = 1, which PyTorch refuses: the biased variance, 0, is kept rather than 0 / 0.)
      self.put_variable("batch_stats", "var",
                        after + (after - self.momentum * before) / jnp.maximum(n - 1, 1))
    return y


def norm_layer(*, train: bool, momentum: float, axis_name: str | None, dtype) -> functools.partial:
  """The BatchNorm every module of ours uses: PyTorch's eps 1e-5, exact two-pass variance."""
  return functools.partial(BatchNorm, use_running_average=not train, momentum=momentum,
                           epsilon=1e-5, axis_name=axis_name, dtype=dtype, use_fast_variance=False)

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


def _normalise_fwd(x, scale, bias, eps, axes, axis_name):
  """Batch statistics (two-pass variance, synced over `axis_name`) and the normalised output."""
  mean = jnp.mean(x, axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  centred = x - mean
  var = jnp.mean(centred * centred, axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  rstd = jax.lax.rsqrt(var + eps)
  xhat = centred * rstd
  return (xhat * scale + bias, mean, var), (xhat, rstd, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalise(x, scale, bias, eps, axes, axis_name):
  return _normalise_fwd(x, scale, bias, eps, axes, axis_name)[0]


def _normalise_bwd(eps, axes, axis_name, residuals, cotangents):
  # The closed form of BN's gradient, dx = scale * rstd * (g - mean(g) - xhat * mean(g * xhat)):
  # two reductions and one elementwise pass, where autodiff of the forward makes several. The
  # batch statistics feed only the running averages, which no loss reads: their cotangents are 0.
  del eps
  xhat, rstd, scale = residuals
  g = cotangents[0]
  d_bias = jnp.sum(g, axes)
  d_scale = jnp.sum(g * xhat, axes)
  count = g.size // d_bias.size
  mean_g, mean_gx = d_bias / count, d_scale / count
  if axis_name is not None:  # Synced BN: the means are over every device's batch.
    mean_g, mean_gx = jax.lax.pmean((mean_g, mean_gx), axis_name)
  d_x = (scale * rstd) * (g - mean_g - xhat * mean_gx)
  return d_x, d_scale, d_bias


_normalise.defvjp(lambda *args: _normalise_fwd(*args), _normalise_bwd)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` (no mask, feature axis last) whose running variance update uses the
  unbiased batch variance; in training its gradient is the closed form (`_normalise_bwd`)."""

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    frozen = flax_module.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    if (frozen or self.axis not in (-1, x.ndim - 1) or not (self.use_scale and self.use_bias)
        or self.axis_index_groups is not None):
      return super().__call__(x, use_running_average)
    features = (x.shape[-1],)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    axes = tuple(range(x.ndim - 1))
    # Init runs outside pmap, where the axis is unbound (flax's BatchNorm does the same).
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = _normalise(x.astype(jnp.float32), scale.astype(jnp.float32),
                              bias.astype(jnp.float32), self.epsilon, axes, axis_name)
    if not self.is_initializing():
      n = x.size // x.shape[-1]
      if self.axis_name is not None:
        n = n * jax.lax.psum(1, self.axis_name)
      # PyTorch's running variance takes the unbiased batch variance, var * n / (n - 1).
      # (n = 1, which PyTorch refuses: the biased variance, 0, is kept rather than 0 / 0.)
      unbiased = var * n / jnp.maximum(n - 1, 1)
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(unbiased)
    return y.astype(self.dtype or x.dtype)


def frozen_affine(bn: nn.BatchNorm):
  """`fn(x)` computing what the bound eval-mode BatchNorm `bn` computes, (x - mean) * (rsqrt(var +
  eps) * scale) + bias in flax's order of operations, from its variables, without calling it; and
  the arrays fn reads. None while initialising, in training, or where flax's BN would not compute
  exactly this (no scale or bias, another feature axis)."""
  if (not bn.use_running_average or bn.is_initializing() or bn.axis not in (-1,)
          or not (bn.use_scale and bn.use_bias)):
    return None
  v = bn.variables
  arrays = (v["batch_stats"]["mean"], v["batch_stats"]["var"], v["params"]["scale"],
            v["params"]["bias"])

  def fn(x, mean, var, scale, bias):
    y = (x - mean) * (jax.lax.rsqrt(var + bn.epsilon) * scale) + bias
    return y.astype(bn.dtype or y.dtype)

  return fn, arrays


def norm_layer(*, train: bool, momentum: float, axis_name: str | None, dtype) -> functools.partial:
  """The BatchNorm every module of ours uses: PyTorch's eps 1e-5, exact two-pass variance."""
  return functools.partial(BatchNorm, use_running_average=not train, momentum=momentum,
                           epsilon=1e-5, axis_name=axis_name, dtype=dtype, use_fast_variance=False)

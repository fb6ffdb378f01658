"""A dense layer with few inputs and very many outputs (the transform net's last layers: 256 ->
1027^2 for `full`, 256 -> 1027 * 64 for `lowrank`), its input gradient on CPU one streaming read of
the kernel.

The input gradient g @ W^T contracts the 1 M-long output axis. XLA:CPU runs it as a GEMM that packs
the 1.08 GB kernel first: 160 ms for 2 clips, where a multiply-reduce over W's rows takes 40 ms and
a matrix-vector product for one clip 20 ms (one read of W at the machine's bandwidth;
docs/benchmarks.md); for lowrank's 65 k outputs the layer's backward goes 16 -> 8 ms. Same variables
as `nn.Dense`; other platforms run its own gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

from aknet_jax.models import winograd


def _input_grad(g, w):
  """g (B, M) @ w (K, M)^T -> (B, K), reading w row by row."""
  if g.shape[0] == 1:
    # XLA fuses the broadcast form for one row into a pass per output element (760 ms): a matvec.
    return jax.lax.dot_general(w, g[0], (((1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)[None]
  return jnp.sum(w[None] * g[:, None], axis=-1, dtype=jnp.float32)  # 1 M terms: f32 sums.


def _affine(z, w, b):
  """z (B, K) @ w (K, M) + b (M,)."""
  return jnp.dot(z, w) + b


_wide_dense = jax.custom_vjp(_affine)


def _wide_dense_fwd(z, w, b):
  return _wide_dense(z, w, b), (z, w)


def _wide_dense_bwd(residuals, g):
  z, w = residuals
  dw = jax.lax.dot_general(z, g, (((0,), (0,)), ((), ())))
  return _input_grad(g, w).astype(z.dtype), dw, jnp.sum(g, axis=0)


_wide_dense.defvjp(_wide_dense_fwd, _wide_dense_bwd)


class WideDense(nn.Dense):
  """`nn.Dense` (bias on, no dot_general override) whose input gradient reads the kernel once on
  CPU (`_input_grad`); the same variables, values and gradients."""

  @nn.compact
  def __call__(self, inputs):
    if not self.use_bias:
      raise ValueError("WideDense needs use_bias=True (nn.Dense's default); use nn.Dense without one")
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    lead = inputs.shape[:-1]
    z = inputs.reshape(-1, inputs.shape[-1])
    y = winograd.cpu_or_default(_wide_dense, _affine, z, kernel, bias)
    return y.reshape(lead + (self.features,))

"""models.conv.Conv: pointwise kernels as a matmul, equal to nn.Conv in values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import models
from aknet_jax.models import conv as conv_lib
from aknet_jax.models.conv import Conv


@pytest.mark.parametrize("kernel,strides,padding,shape", [
    ((1, 1), 1, "VALID", (2, 7, 7, 5)),            # ResNet conv1 / conv3.
    ((1, 1), 2, "VALID", (2, 7, 6, 5)),            # Strided downsample, odd and even sides.
    ((1, 1), (2, 2), ((0, 0), (0, 0)), (2, 8, 5, 5)),
    ((1,), 4, ((0, 0),), (2, 9, 5)),               # Q's 1x1 shortcut with the squared stride.
    ((1,), 1, "SAME", (2, 9, 5)),                  # The transform net's 1x1 convs.
    ((3, 3), 2, ((1, 1), (1, 1)), (2, 7, 7, 5)),   # Not pointwise: nn.Conv itself.
])
def test_equals_flax_conv_with_gradients(kernel, strides, padding, shape):
  x = jax.random.normal(jax.random.key(1), shape)
  ours = Conv(4, kernel, strides=strides, padding=padding)
  ref = nn.Conv(4, kernel, strides=strides, padding=padding)
  v = ref.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(v)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), ref.apply(v, x).shape)
  grad = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * w), argnums=(0, 1))(v, x)
  (gv, gx), (rv, rx) = grad(ours), grad(ref)
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_compute_matches_flax_conv_gradients():
  """In bf16 compute (fp32 params) the written-out backward gives nn.Conv's gradients."""
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
  ours, ref = (m(16, (1, 1), dtype=jnp.bfloat16) for m in (Conv, nn.Conv))
  v = ref.init(jax.random.key(0), x)
  w = jax.random.normal(jax.random.key(3), (2, 6, 6, 16))
  grad = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x).astype(jnp.float32) * w),
                            argnums=(0, 1))(v, x)
  (gv, gx), (rv, rx) = grad(ours), grad(ref)
  assert gx.dtype == rx.dtype and jax.tree.leaves(gv)[0].dtype == jnp.float32
  np.testing.assert_allclose(gx, rx, rtol=2e-2, atol=2e-2)
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=5e-2)


def test_strided_3x3_weight_gradient_is_a_matmul_equal_to_flax_conv():
  """A stride-2 3x3 conv with >= 64 input channels (ResNet-50's res3-res5 first blocks) has
  nn.Conv's values and gradients; on CPU its weight gradient is no XLA convolution (only the
  forward remains one), and the flop count of the step stays the convolution's."""
  x = jax.random.normal(jax.random.key(1), (4, 14, 13, 64))  # Odd and even sides.
  ours = Conv(32, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=True)
  ref = nn.Conv(32, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=True)
  v = ref.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), ref.apply(v, x).shape)
  loss = lambda m: (lambda v, x: jnp.sum(m.apply(v, x) * w))
  (gv, gx), (rv, rx) = (jax.grad(loss(m), argnums=(0, 1))(v, x) for m in (ours, ref))
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  # A nonlinear loss keeps the forward convolution in the program.
  kernel_grad = lambda m: jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))))
  hlo = kernel_grad(ours).lower(v, x).compile().as_text()
  assert hlo.count(" convolution(") == 1
  assert kernel_grad(ref).lower(v, x).compile().as_text().count(" convolution(") == 2
  assert models.hlo_flops(jax.grad(loss(ours)), v, x) == models.hlo_flops(jax.grad(loss(ref)), v, x)


def _conv3x3_float64(x, kernel, bias, g, stride):
  """Independent reference: a pad-1 3x3 cross-correlation (NHWC / HWIO) with this stride and its
  input, weight and bias gradients for the cotangent g, as float64 NumPy sums over the nine
  taps."""
  x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, g))
  oh, ow, s = g.shape[1], g.shape[2], stride
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y, dxp, dk = np.zeros(g.shape), np.zeros_like(xp), np.zeros_like(kernel)
  for u in range(3):
    for v in range(3):
      window = (slice(None), slice(u, u + s * (oh - 1) + 1, s), slice(v, v + s * (ow - 1) + 1, s))
      y += np.einsum("nhwc,ck->nhwk", xp[window], kernel[u, v])
      dxp[window] += np.einsum("nhwk,ck->nhwc", g, kernel[u, v])
      dk[u, v] = np.einsum("nhwc,nhwk->ck", xp[window], g)
  return y + np.asarray(bias, np.float64), dxp[:, 1:-1, 1:-1], dk, g.sum((0, 1, 2))


def test_strided_3x3_with_many_channels_is_im2col_matmuls_equal_to_float64_sums():
  """From `IM2COL_MIN_CHANNELS` input channels (res5's first block, AK-Net's auxiliary head) the
  strided conv's forward and input gradient are matmuls too: values and all gradients equal
  float64 sums, no XLA convolution is left in the program on CPU, and the flop count is still the
  convolution's."""
  from aknet_jax.models import conv as conv_lib
  x = jax.random.normal(jax.random.key(1), (2, 7, 6, conv_lib.IM2COL_MIN_CHANNELS))  # Odd, even.
  _assert_im2col_matmuls_equal_float64_sums(x, 16, stride=2, padding=((1, 1), (1, 1)))


def _assert_im2col_matmuls_equal_float64_sums(x, features, *, stride, padding):
  """A 3x3 Conv with bias: values and all gradients equal `_conv3x3_float64`, no XLA convolution
  is left in the program on CPU, and the flop count is still the convolution's."""
  ours = Conv(features, (3, 3), strides=stride, padding=padding, use_bias=True)
  ref = nn.Conv(features, (3, 3), strides=stride, padding=padding, use_bias=True)
  v = ref.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
  y, vjp = jax.vjp(ours.apply, v, x)
  g = jax.random.normal(jax.random.key(3), y.shape)
  (gv, gx), p = vjp(g), v["params"]
  expected = _conv3x3_float64(x, p["kernel"], p["bias"], g, stride)
  for got, want in zip((y, gx, gv["params"]["kernel"], gv["params"]["bias"]), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  # A nonlinear loss keeps the forward in the program.
  loss = lambda m: (lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)) * g))
  grad = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))
  assert " convolution(" not in grad.lower(v, x).compile().as_text()
  assert models.hlo_flops(jax.grad(loss(ours)), v, x) == models.hlo_flops(jax.grad(loss(ref)), v, x)


@pytest.mark.parametrize("shape", [(8, 2, 2, 16), (4, 4, 4, 8), (3, 3, 5, 6), (3, 7, 7, 8),
                                   (20, 7, 5, 4)])
def test_small_grid_3x3_is_im2col_matmuls_equal_to_float64_sums(shape):
  """Stride-1 3x3 convs on grids of at most 16 cells (the synthetic ResNet-18's res4 and res5), or
  up to 7x7 with at most 1024 output positions (ResNet-50's res5 at 8 or 16 frames), are matmuls
  over the patches on CPU: values and all gradients equal float64 sums, no XLA convolution is
  left, and the flop count is still the convolution's."""
  x = jax.random.normal(jax.random.key(1), shape)
  _assert_im2col_matmuls_equal_float64_sums(x, 12, stride=1, padding="SAME")


@pytest.mark.parametrize("shape,dtype", [((2, 9, 4, 8), jnp.float32),  # 36 cells, 9 rows.
                                         ((21, 7, 7, 8), jnp.float32),  # 7x7, 1029 positions.
                                         ((2, 2, 2, 8), jnp.bfloat16)])
def test_larger_grids_and_bf16_keep_xla_convolution(shape, dtype):
  x = jax.random.normal(jax.random.key(1), shape)
  conv = Conv(8, (3, 3), padding="SAME", dtype=dtype)
  v = conv.init(jax.random.key(0), x)
  assert " convolution(" in jax.jit(conv.apply).lower(v, x).compile().as_text()


@pytest.mark.parametrize("shape", [(4, 7, 6, 8), (2, 28, 28, 16)])
def test_depthwise_3x3_is_shifted_sums_equal_to_flax_conv(shape):
  """A depthwise 3x3 conv (TDN's mSE conv2) runs as nine shifted multiply-adds on CPU: nn.Conv's
  variables, values and gradients (1e-5), no XLA convolution, and the convolution's flop count."""
  c = shape[-1]
  x = jax.random.normal(jax.random.key(1), shape)
  ours = Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, use_bias=True)
  ref = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, use_bias=True)
  v = ref.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(v)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), ref.apply(v, x).shape)
  loss = lambda m: (lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)) * w))
  (gv, gx), (rv, rx) = (jax.grad(loss(m), argnums=(0, 1))(v, x) for m in (ours, ref))
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  grad = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))
  assert " convolution(" not in grad.lower(v, x).compile().as_text()
  assert models.hlo_flops(jax.grad(loss(ours)), v, x) == models.hlo_flops(jax.grad(loss(ref)), v, x)


@pytest.mark.parametrize("cx,cg,form", [
    (96, 64, "g transposed"),   # g (64 >= 64 columns) no wider than x.
    (128, 160, "x transposed"),  # x narrower, at 128 columns.
    (64, 96, "in place"),       # x narrower at 64 columns (res2's 64 -> 256 conv3).
    (80, 40, "in place"),       # g under 64 columns.
])
def test_weight_gradient_forms_equal_float64_sums(cx, cg, form):
  """x^T g in each CPU form equals float64 sums, and the form compiled is the one the column rule
  picks (a transposed operand runs in a conditional's branch; in place, one dot, no branch)."""
  rng = np.random.default_rng(0)
  x, g = rng.standard_normal((300, cx)), rng.standard_normal((300, cg))
  f = jax.jit(conv_lib.weight_gradient)
  xs, gs = jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32)
  np.testing.assert_allclose(f(xs, gs), x.T @ g, rtol=1e-5, atol=1e-5 * np.sqrt(300))
  hlo = f.lower(xs, gs).compile().as_text()
  assert ("conditional(" in hlo) == (form != "in place"), hlo
  # bf16 operands always contract in place.
  assert "conditional(" not in f.lower(xs.astype(jnp.bfloat16), gs.astype(jnp.bfloat16)) \
      .compile().as_text()


def test_pointwise_conv_weight_gradient_transposed_equals_flax_conv():
  """A 1x1 conv wide enough for the transposed weight gradient gives nn.Conv's gradients."""
  x = jax.random.normal(jax.random.key(1), (2, 5, 6, 160))
  ours, ref = Conv(128, (1, 1)), nn.Conv(128, (1, 1))
  v = ref.init(jax.random.key(0), x)
  w = jax.random.normal(jax.random.key(3), (2, 5, 6, 128))
  grad = lambda m: jax.grad(lambda v: jnp.sum(m.apply(v, x) * w))(v)
  np.testing.assert_allclose(grad(ours)["params"]["kernel"], grad(ref)["params"]["kernel"],
                             rtol=1e-5, atol=1e-5)

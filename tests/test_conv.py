"""models.conv.Conv: pointwise kernels as a matmul, equal to nn.Conv in values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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

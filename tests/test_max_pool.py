"""models.max_pool: the stem's 3x3/2 max-pool equals nn.max_pool in values and gradients,
including which element of a window of ties takes the gradient (the first, as in PyTorch)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax.models import fusion, winograd
from aknet_jax.models.max_pool import max_pool_3x3_s2


@pytest.fixture(params=["cpu", "gpu"])
def host(request, monkeypatch):
  """The formulation a CPU host traces (backward written out) or a GPU host's (`nn.max_pool` and
  its autodiff), both run here: the tie rule holds for both. (The value and bf16 tests compare
  against `nn.max_pool` itself, so they run the CPU formulation only.)"""
  if request.param == "gpu":
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  return request.param


def _reference(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 1, 5, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_equals_flax_max_pool_with_gradients(shape, ties):
  x = jax.random.normal(jax.random.key(0), shape)
  if ties:  # ReLU'd small integers: most windows hold several equal maxima.
    x = jnp.maximum(jnp.round(2 * x), 0.0)
  y = max_pool_3x3_s2(x)
  np.testing.assert_array_equal(y, _reference(x))
  w = jax.random.normal(jax.random.key(1), y.shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)
  np.testing.assert_allclose(grad(max_pool_3x3_s2), grad(_reference), rtol=0, atol=1e-6)


def test_ties_send_the_gradient_to_the_first_element_of_each_window(host):
  x = jnp.ones((1, 4, 4, 1))
  g = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x)))(x)[0, :, :, 0]
  # Output (0, 0)'s window starts in the padding: its first real element is (0, 0); output
  # (0, 1)'s window is rows -1..1, columns 1..3: first real element (0, 1); and so on.
  expected = np.zeros((4, 4))
  for r in (0, 1):
    for c in (0, 1):
      expected[max(2 * r - 1, 0), max(2 * c - 1, 0)] += 1
  np.testing.assert_array_equal(g, expected)


def test_bf16():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (2, 3, 3, 3)).astype(jnp.bfloat16)
  grad = lambda f: jax.grad(lambda x: jnp.sum((f(x) * w).astype(jnp.float32)))(x)
  got, ref = grad(max_pool_3x3_s2), grad(_reference)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), atol=1e-2)


def test_unfused_computes_once_on_cpu_and_inline_when_counting_macs():
  """`fusion.unfused` returns fn's values; on CPU fn runs as a conditional's branch (a computation
  XLA cannot fuse into consumers), inline in `direct_form`, so MAC counts stay those of fn."""
  x = jax.random.normal(jax.random.key(0), (4, 6))
  fn = lambda a: (jnp.sin(a) * 2, jnp.argmax(a, 1))
  got, want = fusion.unfused(fn, x), fn(x)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  hlo = lambda f: jax.jit(f).lower(x).compile().as_text()
  assert "conditional" in hlo(lambda x: fusion.unfused(fn, x))
  with winograd.direct_form():
    assert "conditional" not in hlo(lambda x: fusion.unfused(fn, x))


def test_pool_backward_reads_the_forward_indices():
  """On CPU the stem pool's max and tap indices come out of one conditional, so the backward reads
  the int8 indices rather than recomputing the nine-tap comparison per window."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  loss = lambda x: jnp.sum(max_pool_3x3_s2(x) ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
  assert "conditional" in hlo and "s8[2,4,4,3]" in hlo


def test_inference_on_cpu_is_one_elementwise_pass():
  """Without a gradient the CPU pool is the nine strided taps' maximum, not XLA:CPU's reduce-window
  (2.5-3x slower at the stem's shapes); elsewhere it stays `nn.max_pool`."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  hlo = jax.jit(max_pool_3x3_s2).lower(x).compile().as_text()
  assert "reduce-window" not in hlo and "maximum" in hlo
  np.testing.assert_array_equal(jax.jit(max_pool_3x3_s2)(x), _reference(x))
  with winograd.direct_form():
    assert "reduce-window" in jax.jit(lambda x: max_pool_3x3_s2(x)).lower(x).compile().as_text()

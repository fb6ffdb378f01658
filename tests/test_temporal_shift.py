"""TSM shift vs an element-wise NumPy reference of the doc's semantics (reference doc 2.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax.models.temporal_shift import temporal_shift


@pytest.fixture(params=["cpu", "gpu"])
def host(request, monkeypatch):
  """The formulation a CPU host traces (one select pass, backward written out) or a GPU host's
  (slices and a channel concatenation, autodiff), both run here."""
  if request.param == "gpu":
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  return request.param


def _reference(x, t, div):
  """Loop form of doc 2.1: rows b*T + t; fold [0,f) reads t+1, [f,2f) reads t-1, zeros at the ends."""
  n, _, _, c = x.shape
  fold = c // div
  y = np.zeros_like(x)
  for b in range(n // t):
    for s in range(t):
      row = b * t + s
      for ch in range(c):
        if ch < fold:
          y[row, ..., ch] = x[row + 1, ..., ch] if s + 1 < t else 0.0
        elif ch < 2 * fold:
          y[row, ..., ch] = x[row - 1, ..., ch] if s > 0 else 0.0
        else:
          y[row, ..., ch] = x[row, ..., ch]
  return y


@pytest.mark.parametrize("t,c,div", [(4, 16, 8), (3, 20, 8), (5, 12, 4), (1, 8, 8)])
def test_shift_matches_numpy_reference(t, c, div, host):
  x = np.random.RandomState(0).randn(2 * t, 3, 2, c).astype(np.float32)
  got = jax.jit(temporal_shift, static_argnums=(1, 2))(jnp.asarray(x), t, div)
  np.testing.assert_array_equal(np.asarray(got), _reference(x, t, div))


def test_shift_does_not_mix_clips_and_gradient_is_the_adjoint(host):
  t, c = 4, 16
  x = np.random.RandomState(1).randn(3 * t, 2, 2, c).astype(np.float32)
  g = np.random.RandomState(2).randn(*x.shape).astype(np.float32)
  # <shift(x), g> = <x, shift^T(g)>: the gradient is the reverse shift, again clip-local.
  grad = jax.grad(lambda v: jnp.sum(temporal_shift(v, t, 8) * g))(jnp.asarray(x))
  fold = c // 8
  want = np.zeros_like(g)
  g5, w5 = g.reshape(3, t, 2, 2, c), want.reshape(3, t, 2, 2, c)
  w5[:, 1:, ..., :fold] = g5[:, :-1, ..., :fold]
  w5[:, :-1, ..., fold:2 * fold] = g5[:, 1:, ..., fold:2 * fold]
  w5[..., 2 * fold:] = g5[..., 2 * fold:]
  np.testing.assert_array_equal(np.asarray(grad), want)


def test_shift_rejects_partial_clips():
  with pytest.raises(ValueError, match="num_segments"):
    temporal_shift(jnp.zeros((6, 2, 2, 8)), 4, 8)


def test_shift_compiles_to_one_select_pass_without_concatenation():
  # As a channel concatenation XLA:CPU copied the input twice; the select form copies it once.
  x = jnp.zeros((2 * 4, 3, 3, 16))
  fwd = jax.jit(temporal_shift, static_argnums=(1, 2)).lower(x, 4, 8).compile().as_text()
  bwd = jax.jit(jax.grad(lambda v: jnp.sum(temporal_shift(v, 4, 8) * v))).lower(x).compile()
  for text in (fwd, bwd.as_text()):
    assert "concatenate(" not in text
    assert "select(" in text

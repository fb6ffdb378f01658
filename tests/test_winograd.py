"""models.winograd: stride-1 3x3 convs as Winograd F(2x2, 3x3) equal the convolutions they replace."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import models
from aknet_jax.models import winograd
from aknet_jax.models.conv import Conv
from conftest import ROOT


def _correlate_f64(x, w):
  """Independent reference: 'same' 3x3 cross-correlation in float64 NumPy, NHWC / HWIO."""
  n, h, wd, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((n, h, wd, w.shape[-1]))
  for u in range(3):
    for v in range(3):
      y += np.einsum("nhwc,ck->nhwk", xp[:, u:u + h, v:v + wd], w[u, v].astype(np.float64))
  return y


@pytest.mark.parametrize("shape,features", [((2, 8, 12, 5), 7), ((1, 2, 2, 3), 4),
                                            ((3, 6, 4, 9), 9),
                                            ((1, 4, 6, 66), 65)])  # Winograd's own dw.
def test_values_and_gradients_equal_float64_correlation(shape, features):
  """The Winograd form and its written-out backward against float64 sums, including the borders
  (H, W = 2) and non-square maps and channel counts."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  w = (rng.standard_normal((3, 3, shape[-1], features)) / 3).astype(np.float32)
  g = rng.standard_normal(shape[:3] + (features,)).astype(np.float32)
  b = rng.standard_normal((features,)).astype(np.float32)
  y, vjp = jax.vjp(lambda x, w, b: winograd._winograd(x, w, b, None), jnp.asarray(x),
                   jnp.asarray(w), jnp.asarray(b))
  dx, dw, db = vjp(jnp.asarray(g))
  np.testing.assert_allclose(y, _correlate_f64(x, w) + b, rtol=1e-5, atol=1e-5)
  # The bias gradient comes from the tile sums of g (the transformed g's component 5).
  np.testing.assert_allclose(db, g.astype(np.float64).sum((0, 1, 2)), rtol=1e-5, atol=1e-4)
  # d<g, y>/dx is the correlation of g with the kernel flipped and transposed; d/dw sums x * g.
  np.testing.assert_allclose(dx, _correlate_f64(g, np.flip(w, (0, 1)).swapaxes(2, 3)),
                             rtol=1e-5, atol=1e-5)
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, wd = shape[1:3]
  dw_ref = np.stack([np.stack([np.einsum("nhwc,nhwk->ck", xp[:, u:u + h, v:v + wd], g)
                               for v in range(3)]) for u in range(3)])
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


def test_conv_module_takes_winograd_and_equals_flax_conv():
  """A ResNet-sized 3x3 layer (64 channels, 8 frames of 28x28: 1568 tiles) runs without an XLA
  convolution on CPU, with nn.Conv's variables, values and gradients (fp32, 1e-5)."""
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 64))
  ours = Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=True)
  ref = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=True)
  v = ref.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(v)
  hlo = jax.jit(lambda v, x: ours.apply(v, x)).lower(v, x).as_text()
  assert "convolution" not in hlo and "dot_general" in hlo
  y, yr = ours.apply(v, x), ref.apply(v, x)
  scale = float(jnp.max(jnp.abs(yr)))
  np.testing.assert_allclose(y, yr, rtol=1e-5, atol=1e-5 * scale)
  w = jax.random.normal(jax.random.key(3), yr.shape)
  grad = lambda m: jax.jit(jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * w), argnums=(0, 1)))(v, x)
  (gv, gx), (rv, rx) = grad(ours), grad(ref)
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(rx))))
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_narrow_layer_runs_winograd_forward_and_xla_backward():
  """TEA's 52-channel Res2Net split (8 frames of 28x28: 1568 tiles) runs its forward as Winograd
  and its gradients as XLA's convolution (Winograd's tile contraction into 52 x 52 is the slower
  one there), with nn.Conv's values and gradients (fp32, 1e-5)."""
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 52))
  ours = Conv(52, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  ref = nn.Conv(52, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  v = ref.init(jax.random.key(0), x)
  assert "convolution" not in jax.jit(ours.apply).lower(v, x).as_text()
  w = jax.random.normal(jax.random.key(3), x.shape)
  grad = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * w), argnums=(0, 1))
  hlo = jax.jit(grad(ours)).lower(v, x).as_text()
  assert hlo.count("convolution(") == 2  # The input and the weight gradient; no forward conv.
  yr = ref.apply(v, x)
  np.testing.assert_allclose(ours.apply(v, x), yr, rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(yr))))
  (gv, gx), (rv, rx) = jax.jit(grad(ours))(v, x), jax.jit(grad(ref))(v, x)
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(rx))))
  np.testing.assert_allclose(gv["params"]["kernel"], rv["params"]["kernel"], rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(rv["params"]["kernel"]))))


@pytest.mark.parametrize("shape,features,expected", [
    ((8, 56, 56, 64), 64, True),      # ResNet-50 res2 at one clip of 8 frames.
    ((8, 28, 28, 128), 128, True),    # res3 at one clip: 1568 tiles.
    ((16, 14, 14, 256), 256, True),   # res4 at two clips: 784 tiles, 45 vs 58 ms fwd + bwd.
    ((8, 14, 14, 256), 256, True),    # res4 at one clip: 392 tiles, forward 0.66-0.80x.
    ((4, 14, 14, 256), 256, False),   # 196 tiles: forward + backward 1.13x XLA's.
    ((8, 14, 14, 128), 128, False),   # 392 tiles of 128 channels: a tie or a loss.
    ((64, 14, 14, 256), 256, True),   # res4 at eight clips.
    ((16, 7, 7, 512), 512, False),    # res5: odd sides.
    ((16, 56, 56, 16), 16, False),    # TDN's mSE convs at 1/16 of the channels.
    ((64, 14, 14, 64), 32, False),
    ((8, 56, 56, 26), 26, True),      # TEA's res2 splits: 6272 tiles, forward 0.68x of XLA's.
    ((8, 28, 28, 52), 52, True),      # TEA's res3 splits: 1568 tiles, 0.75x.
    ((4, 28, 28, 52), 52, False),     # 784 tiles of a narrow layer: too short.
    ((16, 56, 56, 32), 32, False),    # XLA's kernel wins at a multiple of 32 (Winograd 1.05x).
    ((8, 14, 14, 104), 104, False),   # TEA's res4 splits at one clip: 392 tiles.
])
def test_applies_where_measured_faster(shape, features, expected):
  assert winograd.applies(shape, features, jnp.float32) is expected
  assert not winograd.applies(shape, features, jnp.bfloat16)


def test_macs_count_the_convolution_not_winograd():
  """`models.hlo_flops` (hence gmacs) counts a Winograd layer as the convolution it computes,
  even after the same function was compiled with Winograd."""
  x = jax.ShapeDtypeStruct((8, 14, 14, 64), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
  fn = lambda x, w: winograd.conv3x3(x, w)
  jax.jit(fn).lower(x, w).compile()
  direct = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert models.hlo_flops(fn, x, w) == models.hlo_flops(direct, x, w)
  # XLA counts the taps inside the map: 14 x 14 positions minus the border's missing taps.
  taps = sum(min(i + 2, 14) - max(i - 1, 0) for i in range(14)) ** 2
  assert models.hlo_flops(fn, x, w) == 2 * 8 * taps * 64 * 64


def test_conv_bench_prints_a_row_per_layer_and_rejects_bad_layers():
  """`python -m aknet_jax.conv_bench` times both forms per layer (odd sides: XLA only) and says
  whether Conv picks Winograd; a malformed --layers is one error line."""
  cmd = [sys.executable, "-m", "aknet_jax.conv_bench", "--frames=2", "--layers=8x4,7x4",
         "--reps=1"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  rows = [l.split("|")[1:-1] for l in res.stdout.splitlines() if l.startswith("| 2 ")]
  assert [r[1].strip() for r in rows] == ["8×8×4", "7×7×4"]
  assert all(float(c) > 0 for c in (rows[0][2], rows[0][3], rows[0][5], rows[0][6]))
  assert rows[1][3].strip() == "—" and rows[0][8].strip() == rows[1][8].strip() == "no"
  bad = subprocess.run(cmd[:3] + ["--layers=8by4"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
  assert bad.returncode != 0 and bad.stdout == ""
  assert bad.stderr.strip().splitlines() == ["error: --layers: '8by4' is not SIDExCHANNELS "
                                             "(e.g. 56x64)"]


def test_kernel_transforms_equal_the_g_matrix_products():
  """G w G^T and its transpose G^T du G, written as sums, equal the matrix products in float64."""
  g = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
  rng = np.random.default_rng(0)
  w, du = rng.standard_normal((3, 3, 5, 7)), rng.standard_normal((4, 4, 5, 7))
  np.testing.assert_allclose(winograd.kernel_transform(jnp.asarray(w, jnp.float32)),
                             np.einsum("au,uvck,bv->abck", g, w, g), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(winograd.kernel_transform_transpose(jnp.asarray(du, jnp.float32)),
                             np.einsum("au,abck,bv->uvck", g, du, g), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,convolutions", [(64, 1), (65, 0)])
def test_weight_gradient_up_to_64_channels_is_xla_convolution(channels, convolutions):
  """Up to DIRECT_WGRAD_MAX_CHANNELS the weight gradient is XLA's (one convolution in the
  backward), above it Winograd's matmul (none); the input gradient stays Winograd's in both."""
  x = jnp.ones((2, 8, 8, channels))
  w = jnp.ones((3, 3, channels, channels))
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(winograd._winograd(x, w, None, None))),
                           argnums=(0, 1)))
  assert grads.lower(x, w).compile().as_text().count(" convolution(") == convolutions


def test_a_program_holds_the_formulation_of_the_platforms_it_is_lowered_for(monkeypatch):
  """A jit traces one formulation: Winograd's matmuls on a CPU host, XLA's convolution on a GPU /
  TPU host (`platform_dependent` would trace and differentiate both, and off CPU lower both into
  the program). An export for several platforms (`lowering_for`) carries each its own."""
  x = jnp.ones((8, 28, 28, 64))
  m = Conv(64, (3, 3), padding=((1, 1), (1, 1)))
  v = m.init(jax.random.key(0), x)
  # A new jit each time: tracing is cached per function, whatever the backend says.
  grads = lambda: jax.jit(jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1)))
  on_cpu = grads().trace(v, x)
  assert "platform_index" not in str(on_cpu.jaxpr)
  assert "dot_general" in on_cpu.lower(lowering_platforms=("cpu",)).as_text()
  with winograd.lowering_for(("cpu", "cuda")):
    both = grads().trace(v, x)
  assert "platform_index" in str(both.jaxpr)
  both = both.lower(lowering_platforms=("cpu", "cuda")).as_text()
  assert "dot_general" in both and "convolution" in both
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  on_gpu = grads().trace(v, x).lower(lowering_platforms=("cuda",)).as_text()
  assert "stablehlo.case" not in on_gpu and "dot_general" not in on_gpu
  assert "convolution" in on_gpu


def test_a_gpu_host_traces_no_written_out_backward(monkeypatch):
  """The 1x1 conv, the stem max-pool and the TSM shift write their backward out for XLA:CPU; a
  GPU host traces them as plain JAX and autodiff, the program that ran on GPU before them."""
  from aknet_jax.models.max_pool import max_pool_3x3_s2
  from aknet_jax.models.temporal_shift import temporal_shift
  x = jnp.ones((4, 6, 6, 16))
  m = Conv(8, (1, 1))
  v = m.init(jax.random.key(0), x)
  # New functions each time: tracing is cached per function, whatever the backend says.
  layers = lambda: {"1x1 conv": lambda x: m.apply(v, x), "max-pool": lambda x: max_pool_3x3_s2(x),
                    "shift": lambda x: temporal_shift(x, 2, 8)}
  for name, f in layers().items():
    assert "custom_vjp_call" in str(jax.make_jaxpr(f)(x)), name
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  for name, f in layers().items():
    jaxpr = str(jax.make_jaxpr(f)(x))
    assert "custom_vjp_call" not in jaxpr and "platform_index" not in jaxpr, name

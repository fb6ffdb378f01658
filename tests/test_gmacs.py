"""Inference cost (MACs, the paper's "GFLOPs") and parameter counts, without allocating weights."""

import math

import jax
import jax.numpy as jnp
import pytest

from aknet_jax import macs
from aknet_jax import models

N = round(0.3 * 8 * 14 * 14)  # 470 keypoints at res4, 8 frames, 224^2.
C, K = 1024, 174


def _backbone_gmacs(config, upto):
  model = models.build(config, "backbone")
  frames = jax.ShapeDtypeStruct(models.input_shape(config), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False, upto=upto),
                          frames)
  # Counted as models.gmacs counts (convolutions in their direct form, not CPU Winograd).
  return models.hlo_flops(lambda v, x: model.apply(v, x, train=False, upto=upto),
                          shapes, frames) / 2e9


@pytest.mark.parametrize("backbone,paper", [("tsm", 33.0), ("tdn", 36.0)])
def test_backbones_match_the_paper_table(backbone, paper):
  config = macs.row_config(backbone, None)
  assert abs(models.gmacs(config, "video_net") / paper - 1) < 0.05
  # Reference counts of the PyTorch models (K = 174; TDN without its unused conv1_temp).
  assert models.param_count(config, "video_net") == {"tsm": 23_864_558, "tdn": 24_410_574}[backbone]


def test_the_tsm_shift_costs_no_macs():
  """TSM is TSN's ResNet with a shift, which moves channels and multiplies nothing (the paper
  counts 33 G for both); a shift written as selects once counted 0.09 G here."""
  tsm = macs.row_config("tsm", None, width=16, image_size=64)
  tsn = macs.row_config("tsn", None, width=16, image_size=64)
  assert models.gmacs(tsm, "video_net") == models.gmacs(tsn, "video_net")


@pytest.mark.parametrize("point_stride,s", [("same", 2), ("squared", 4)])
def test_point_subnet_and_transform_costs_match_an_analytic_count(point_stride, s):
  none = macs.row_config("tsm", "none", point_stride=point_stride)
  n2 = (N + s - 1) // s  # The strided block keeps ceil(N / s) points.
  q = N * C * 512 + n2 * (3 * 512 * 512 + 512 * 2048 + C * 2048)  # layer4_0, with the shortcut.
  q += 2 * n2 * (2048 * 512 + 3 * 512 * 512 + 512 * 2048)  # layer4_1, layer4_2.
  heads = 8 * 14 * 14 * C + (C + 2048) * K  # Heatmap mix and classifier (the aux head is not run).
  measured = models.gmacs(none, "aknet") - _backbone_gmacs(none, "res4")
  assert abs(measured / ((q + heads) / 1e9) - 1) < 0.03

  full = macs.row_config("tsm", "full", point_stride=point_stride)
  c3 = C + 3
  trunk = N * (c3 * 64 + 64 * 128 + 128 * 1024) + 1024 * 512 + 512 * 256
  transform = trunk + 256 * c3 * c3 + N * c3 * C  # Predict A, then the first C columns of P A.
  assert abs((models.gmacs(full, "aknet") - models.gmacs(none, "aknet")) / (transform / 1e9) - 1) < 0.03


def test_transform_and_aux_parameter_counts():
  none, full = macs.row_config("tsm", "none"), macs.row_config("tsm", "full")
  c3 = C + 3
  convs = (c3 * 64 + 64) + (64 * 128 + 128) + (128 * 1024 + 1024)
  dense = (1024 * 512 + 512) + (512 * 256 + 256) + (256 * c3 * c3 + c3 * c3)
  bn = 2 * (64 + 128 + 1024 + 512 + 256)
  assert models.param_count(full, "aknet") - models.param_count(none, "aknet") == convs + dense + bn
  aux = 2 * (9 * C * C + 2 * C) + (C * K + K)
  assert models.param_count(full, "aknet") - models.param_count(full, "aknet", inference=True) == aux


def test_counting_allocates_no_weights():
  config = macs.row_config("tdn", "full")  # ~310 M parameters: 1.2 GB if materialised.
  before = sum(x.nbytes for x in jax.live_arrays())
  assert 31.0 < models.gmacs(config, "aknet") < 33.5 and models.param_count(config, "aknet") > 300e6
  assert sum(x.nbytes for x in jax.live_arrays()) - before < 2**20


def test_macs_table_lists_every_row(one_block_per_stage):
  # Row names, columns and formatting, not the figures: one block per stage counts as well.
  table = macs.table(depth=50, width=8, frames=2, image_size=64, num_classes=5, rank=4)
  rows = [line for line in table.splitlines() if line.startswith("| ") and "model" not in line]
  assert [r.split("|")[1].strip() for r in rows] == [name for name, _, _, _ in macs.ROWS]
  assert all(math.isfinite(float(r.split("|")[4])) for r in rows)
  assert [r.split("|")[3].strip() for r in rows] == [s or "—" for _, _, _, s in macs.ROWS]
  assert "| — |" in rows[1]  # No paper figure away from the paper's settings.


def test_a_program_without_arithmetic_costs_zero_macs():
  """The identity transform (transform=none) has no flops; XLA's analysis then omits the key."""
  assert models.hlo_flops(lambda x: x, jnp.ones((3, 4))) == 0.0
  assert models.hlo_flops(lambda x: x * 2.0, jnp.ones((3, 4))) == 12.0

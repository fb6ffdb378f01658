"""Stage 1 -> 2: a trained backbone compacted into AK-Net (design §1.7, two-stage schedule)."""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from aknet_jax import config as config_lib
from aknet_jax import models

B, T, S = 2, 4, 64


def tiny_config(backbone="tsm", depth=18, stage="2", width=8, split="res4"):
  c = config_lib.base_config()
  c.stage = stage
  c.model.backbone, c.model.depth, c.model.width = backbone, depth, width
  c.dataset.frames_per_segment = 5 if backbone == "tdn" else 1
  c.dataset.num_segments, c.dataset.image_size, c.dataset.num_classes = T, S, 5
  c.model.aknet.split, c.model.aknet.se_reduction, c.model.aknet.transform_rank = split, 4, 4
  return config_lib.validate(c)


def random_stage1(config, seed=0):
  """Stage-1 VideoNet variables of the right shapes filled with random values (no compile)."""
  shapes = jax.eval_shape(functools.partial(models.init_variables, config, "video_net"), jax.random.key(0))
  rng = np.random.default_rng(seed)
  fill = lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("var", "scale")
                          else 0.2 * rng.normal(size=s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree))


def _check_copied(stage1, stage2):
  """F copied; Q = 2D kernels summed over width, the rest of Q copied; no TDN modules in Q."""
  for coll in ("batch_stats", "params"):
    src, dst = _flat(stage1[coll]), _flat(stage2[coll])
    n_points = 0
    for path, value in dst.items():
      if path[0] == "backbone":
        np.testing.assert_array_equal(value, src[path])
      elif path[0] == "points":
        n_points += 1
        assert "mse" not in path and "shift" not in path
        want = src[("backbone",) + path[1:]]
        if path[-1] == "kernel":
          want = want.sum(axis=1)
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6)
    assert n_points > 0
  return src, dst


def test_compacted_tsm_net_keeps_the_backbone_output_at_the_split():
  config1, config2 = tiny_config(stage="1"), tiny_config()
  stage1 = random_stage1(config1)
  stage2 = models.compact(stage1, config2, jax.random.key(3))
  _check_copied(stage1, stage2)
  new = stage2["params"]  # New parts: freshly initialised (the transform starts as A = I).
  assert set(new) == {"backbone", "heatmap", "transform", "points", "head", "aux"}
  np.testing.assert_array_equal(new["transform"]["fc3"]["kernel"], 0.0)
  np.testing.assert_array_equal(new["transform"]["fc3"]["bias"], 0.0)  # A = I + f(z), f = 0.
  assert 0.0005 < float(np.std(new["head"]["kernel"])) < 0.002
  assert set(stage2["params"]["points"]) == {"layer4_0", "layer4_1"}

  frames = jax.random.normal(jax.random.key(1), (B, T, S, S, 3))
  model = models.build(config2, "aknet")

  @jax.jit
  def run(stage1, stage2, frames):
    ref = models.build(config1, "backbone").apply(
        {"params": stage1["params"]["backbone"], "batch_stats": stage1["batch_stats"]["backbone"]},
        frames, train=False, upto="res4")
    logits, state = model.apply(stage2, frames, train=False,
                                capture_intermediates=lambda mdl, _: mdl.name == "backbone")
    return ref, logits, state["intermediates"]["backbone"]["__call__"][0]

  ref, logits, features = run(stage1, stage2, frames)
  assert features.shape == ref.shape == (B * T, 4, 4, 32)
  np.testing.assert_allclose(np.asarray(features), np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert logits.shape == (B, 5) and np.all(np.isfinite(np.asarray(logits)))


def test_compacted_tdn_net_drops_temporal_modules_in_q():
  """(compact's init of the new parts runs the TDN AK-Net forward; the TSM test checks outputs.)"""
  config1, config2 = tiny_config("tdn", 50, "1"), tiny_config("tdn", 50, "2")
  stage1 = random_stage1(config1)
  assert "mse" in stage1["params"]["backbone"]["layer4_0"]
  stage2 = models.compact(stage1, config2, jax.random.key(0))
  src, dst = _check_copied(stage1, stage2)
  assert ("points", "layer4_0", "conv2", "bias") in dst  # TDN's conv biases are carried over.
  assert dst[("points", "layer4_0", "conv2", "kernel")].shape == (3, 64, 64)


def test_mismatched_stage1_tree_is_a_clear_error():
  stage1 = random_stage1(tiny_config(stage="1", width=16))
  with pytest.raises(ValueError, match=r"stage-1 params/backbone/\S+ has shape \(.*16.*\), "
                                       r"expected \(.*8.*\) for this config"):
    models.compact(stage1, tiny_config(width=8), jax.random.key(0))
  stage1 = random_stage1(tiny_config(stage="1"))
  del stage1["params"]["backbone"]["layer4_1"]
  with pytest.raises(ValueError, match=r"lack params/backbone/layer4_1/\S+ \(expected shape "
                                       r"\((3, 3, )?64(, 64)?,?\)\); they do not fit"):
    models.compact(stage1, tiny_config(), jax.random.key(0))
  with pytest.raises(ValueError, match=r"params\['backbone'\]"):
    models.compact({"params": {}}, tiny_config(), jax.random.key(0))

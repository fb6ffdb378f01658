"""Configs: every dataset config loads, variants apply, bad fields fail with one line naming them."""

import pytest

from aknet_jax import config as config_lib
from conftest import load_config as load


@pytest.mark.parametrize("name,classes", [("synthetic", 8), ("ssv1", 174), ("ssv2", 174),
                                          ("diving48", 48)])
def test_dataset_configs_load_with_the_paper_recipe(name, classes):
  c = load(name)
  assert c.dataset.num_classes == classes
  assert c.dataset.num_segments == 8
  if name.startswith("ssv"):
    assert (c.train.optimizer, c.train.learning_rate, c.train.num_epochs) == ("sgd", 0.01, 50)
    assert tuple(c.train.lr_steps) == (20, 40) and not c.dataset.flip
    assert c.train.weight_decay == 5e-4 and c.train.grad_clip == 20 and c.model.dropout == 0.5
  if name == "diving48":
    assert (c.train.optimizer, c.train.learning_rate, c.train.num_epochs) == ("adam", 5e-4, 45)
    assert c.dataset.flip and c.dataset.eval_split == "test"
  assert c.dataset.train_augment == "tsm_multiscale"  # TSM's crop; the paper's is a variant.


def test_variants_from_the_config_string():
  c = load("ssv2", "backbone=tdn,stage=2,alpha=0.5,split=res3,transform=lowrank")
  assert (c.model.backbone, c.stage, c.model.aknet.alpha) == ("tdn", "2", 0.5)
  assert (c.model.aknet.split, c.model.aknet.transform_mode) == ("res3", "lowrank")
  assert c.dataset.frames_per_segment == 5 and c.train.lr_policy == "uniform"
  assert load("ssv1", "train_augment=paper").dataset.train_augment == "paper"
  c = load("ssv2", "backbone=tsn,depth=101")
  assert c.model.depth == 101
  assert c.dataset.frames_per_segment == 1 and c.train.lr_policy == "tsm"
  # A variant a config declares on a tuple field takes '+'-separated values of its type.
  config_lib.apply_variants(c, "lr_steps=10+20", {"lr_steps": "train.lr_steps"})
  assert tuple(c.train.lr_steps) == (10, 20)


def test_one_override_language_dotted_fields_go_through_the_config_flag():
  """Config strings take only the variants their file declares; any field is --config.FIELD."""
  with pytest.raises(ValueError, match=r"unknown field 'model.depth'.*--config.FIELD=VALUE"):
    load("ssv2", "model.depth=101")
  with pytest.raises(ValueError, match="unknown field 'tiny'"):
    load("ssv2", "tiny")  # A variant of configs/synthetic.py only.
  c = load("synthetic", "tiny,batch=8")  # Left to right: `batch` refines `tiny`.
  assert (c.train.batch_size, c.model.width) == (8, 8)


@pytest.mark.parametrize("arg,field", [
    ("backbone=i3d", "config.model.backbone"),
    ("depth=42", "config.model.depth"),
    ("split=res5", "config.model.aknet.split"),
    ("alpha=0", "config.model.aknet.alpha"),
    ("alpha=1.5", "config.model.aknet.alpha"),
    ("transform=dense", "config.model.aknet.transform_mode"),
    ("stage=3", "config.stage"),
    ("image_size=100", "config.dataset.image_size"),
    ("train_augment=randaugment",
     "config.dataset.train_augment: 'randaugment' is not one of ('tsm_multiscale', 'paper')"),
    ("bogus=1", "unknown field 'bogus'"),
    ("depth=abc", "model.depth"),
    ("backbone=tdn,depth=34", "config.model.depth: 34, but backbone 'tdn' needs a bottleneck"),
])
def test_bad_values_fail_with_one_line_naming_the_field(arg, field):
  with pytest.raises(ValueError) as e:
    load("ssv2", arg)
  assert field in str(e.value) and "\n" not in str(e.value)


def test_tdn_needs_five_frames_per_segment():
  c = load("ssv2")
  c.model.backbone = "tdn"
  with pytest.raises(ValueError, match="config.dataset.frames_per_segment"):
    config_lib.validate(c)

"""Optimiser and learning-rate schedule: the TSM/TDN recipes as optax transformations.

PyTorch SGD with coupled L2 and lr multipliers maps exactly to
clip -> add_decayed_weights(mask) -> trace(momentum) -> scale(-lr(step)) -> scale(per-leaf lr_mult)
: a constant per-parameter multiplier commutes with the momentum buffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from aknet_jax.models import resnet

# Classifiers that start from scratch in a stage (TSM's `new_fc`, AK-Net's heads).
_CLASSIFIERS = ("new_fc", "head", "aux")


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """Iterations per epoch with drop_last, as the official loaders."""
  return max(1, num_train_examples // config.train.batch_size)


def stage_num_steps(config: ml_collections.ConfigDict, num_train_examples: int, stage: str) -> int:
  """Total training steps of a stage: num_steps (or stage2_num_steps) if set, else epochs."""
  t = config.train
  if stage == "2" and t.stage2_num_steps > 0:
    return int(t.stage2_num_steps)
  if t.num_steps > 0:
    return int(t.num_steps)
  return int(t.num_epochs * steps_per_epoch(config, num_train_examples))


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The recipe's lr, scaled by batch / recipe_batch_size where `train.scale_lr_with_batch`."""
  t = config.train
  if t.scale_lr_with_batch:
    return t.learning_rate * t.batch_size / t.recipe_batch_size
  return t.learning_rate


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int):
  """Step decay by `lr_decay` at `lr_steps`, given in epochs of the `num_epochs` schedule.

  With `num_steps` set, the milestones keep their place as fractions of the schedule
  (epoch 20 of 50 -> 40 % of the steps), so short runs keep the recipe's shape. A linear warm-up
  from lr / 100 leaves them where they are (TDN's warm-up: its MultiStepLR milestones are epochs
  of the whole run); a milestone inside the warm-up applies from its end.
  """
  t = config.train
  total_epochs = float(t.num_epochs) if t.num_epochs > 0 else 1.0
  warmup = max(int(t.warmup_steps), 0)
  lr = base_learning_rate(config)
  peak, boundaries = lr, {}
  for e in t.lr_steps:
    step = int(round(num_steps * float(e) / total_epochs))
    if not 0 < step < num_steps:
      continue
    if step <= warmup:
      peak *= t.lr_decay
    else:  # optax.join_schedules counts the schedule after the warm-up from 0.
      boundaries[step - warmup] = boundaries.get(step - warmup, 1.0) * t.lr_decay
  schedule = optax.piecewise_constant_schedule(peak, boundaries)
  if warmup > 0:
    warm = optax.linear_schedule(lr / 100.0, lr, warmup)
    schedule = optax.join_schedules([warm, schedule], [warmup])
  return schedule


def _leaf_kind(path) -> str:
  names = [getattr(k, "key", str(k)) for k in path]
  leaf = names[-1]
  is_bn = any(n.startswith("bn") or n.endswith("_bn") or "norm" in n for n in names[:-1])
  if is_bn:
    return "bn"
  if any(n in _CLASSIFIERS for n in names[:-1]):
    return "fc_bias" if leaf == "bias" else "fc_weight"
  return "bias" if leaf == "bias" else "weight"


def multipliers(config: ml_collections.ConfigDict, params, *, new_classifier: bool):
  """Per-leaf (lr_mult, decay_mult) trees for the configured lr policy: TSM's
  `get_optim_policies` groups (BN and biases undecayed, biases x2, a new classifier x5/x10), or
  TDN's uniform one."""
  if config.train.lr_policy == "uniform":
    ones = jax.tree_util.tree_map(lambda _: 1.0, params)
    return ones, ones
  table = {
      "weight": (1.0, 1.0), "bias": (2.0, 0.0), "bn": (1.0, 0.0),
      "fc_weight": (5.0, 1.0) if new_classifier else (1.0, 1.0),
      "fc_bias": (10.0, 0.0) if new_classifier else (2.0, 0.0),
  }
  frozen = config.model.partial_bn

  def lr_mult(path, _):
    names = tuple(getattr(k, "key", str(k)) for k in path)
    if frozen and names[0] == "backbone" and resnet.is_frozen_bn_path(names):
      return 0.0
    return table[_leaf_kind(path)][0]

  def decay_mult(path, _):
    return table[_leaf_kind(path)][1]

  return (jax.tree_util.tree_map_with_path(lr_mult, params),
          jax.tree_util.tree_map_with_path(decay_mult, params))


def _scale_by_tree(mults) -> optax.GradientTransformation:
  return optax.stateless(lambda updates, params=None: jax.tree_util.tree_map(
      lambda u, m: u * jnp.asarray(m, u.dtype), updates, mults))


def create_optimizer(config: ml_collections.ConfigDict, params, num_steps: int, *,
                     new_classifier: bool = True) -> tuple[optax.GradientTransformation, callable]:
  """Returns (optimizer, lr schedule) for the config's recipe."""
  t = config.train
  schedule = learning_rate_schedule(config, num_steps)
  lr_mult, decay_mult = multipliers(config, params, new_classifier=new_classifier)
  decay_mask = jax.tree_util.tree_map(lambda m: m > 0, decay_mult)
  parts = []
  if t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  if t.weight_decay > 0:
    parts.append(optax.add_decayed_weights(t.weight_decay, mask=decay_mask))
  if t.optimizer == "sgd":
    parts.append(optax.trace(decay=t.momentum, nesterov=False))
  else:
    parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
  parts.append(optax.scale_by_schedule(lambda step: -schedule(step)))
  parts.append(_scale_by_tree(lr_mult))
  return optax.chain(*parts), schedule


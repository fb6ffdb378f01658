"""Train state and the pure per-device steps that `jax.pmap` runs with axis name 'batch'."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from aknet_jax.train import losses

AXIS = "batch"


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics."""
  batch_stats: Any = None


def create_state(model, variables, tx) -> TrainState:
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", flax.core.FrozenDict()))


def step_rng(seed: int, step):
  """The dropout key of a step on this device: a pure function of (seed, step, device)."""
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))


def _gradients(state: TrainState, batch_stats, batch, rng, config):
  """(grads, metrics incl. accuracy, new batch_stats) of one (micro-)batch on this device."""

  def loss_fn(params):
    outputs, new_vars = state.apply_fn(
        {"params": params, "batch_stats": batch_stats}, batch["frames"], train=True,
        rngs={"dropout": rng}, mutable=["batch_stats"])
    loss, metrics = losses.compute_loss(outputs, batch["label"], config)
    return loss, (metrics, outputs["logits"], new_vars["batch_stats"])

  (_, (metrics, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = dict(metrics)
  metrics.update(_accuracy(logits, batch["label"]))
  return grads, metrics, new_stats


def train_step(state: TrainState, batch, *, config: ml_collections.ConfigDict, schedule):
  """One optimiser step on a device's shard; gradients and BN statistics are averaged over 'batch'.

  With `train.grad_accum_steps` = k > 1 the shard is cut into k micro-batches run one after the
  other (a scan: activations of one micro-batch in memory at a time) and their mean gradient makes
  the one update: the large batch's update, except that BatchNorm normalises each micro-batch
  alone and updates its running statistics k times.
  """
  rng = step_rng(config.train.seed, state.step)
  k = config.train.grad_accum_steps
  if k == 1:
    grads, metrics, batch_stats = _gradients(state, state.batch_stats, batch, rng, config)
  else:
    micro = jax.tree_util.tree_map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)

    def body(carry, xs):
      stats, total = carry
      mb, i = xs
      g, m, stats = _gradients(state, stats, mb, jax.random.fold_in(rng, i), config)
      return (stats, jax.tree_util.tree_map(jnp.add, total, g)), m

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    init = (flax.core.unfreeze(state.batch_stats), zeros)  # The apply returns plain dicts.
    (batch_stats, total), per_micro = jax.lax.scan(body, init, (micro, jnp.arange(k)))
    grads = jax.tree_util.tree_map(lambda g: g / k, total)
    metrics = jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), per_micro)
  grads = jax.lax.pmean(grads, AXIS)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics["lr"] = schedule(state.step)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return new_state, jax.lax.pmean(metrics, AXIS)


def _accuracy(logits, labels):
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hit = top5 == labels[..., None]
  return {"top1": jnp.mean(hit[..., 0].astype(jnp.float32)),
          "top5": jnp.mean(jnp.any(hit, axis=-1).astype(jnp.float32))}


def eval_step(variables, frames, *, model, with_keypoints: bool = False):
  """Logits (views averaged) of a device's shard; AK-Net can also return its keypoints.

  frames: (b, T*L, H, W, 3) or (b, V, T*L, H, W, 3) for multi-view (logits averaged over V).
  """
  views = frames.ndim == 6
  if views:
    b, v = frames.shape[:2]
    frames = frames.reshape((b * v,) + frames.shape[2:])
  if with_keypoints:
    logits, kp = model.apply(variables, frames, train=False, return_keypoints=True)
  else:
    logits, kp = model.apply(variables, frames, train=False), None
  logits = logits.astype(jnp.float32)
  if views:
    logits = logits.reshape((b, v) + logits.shape[1:]).mean(axis=1)
  return logits, kp


def pmapped_train_step(config, schedule):
  return jax.pmap(functools.partial(train_step, config=config, schedule=schedule),
                  axis_name=AXIS, donate_argnums=(0,))


def pmapped_eval_step(model, with_keypoints: bool = False):
  """pmapped eval_step taking replicated variables {'params', 'batch_stats'}."""
  return jax.pmap(functools.partial(eval_step, model=model, with_keypoints=with_keypoints),
                  axis_name=AXIS)


def variables_of(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}

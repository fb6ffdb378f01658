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


def train_step(state: TrainState, batch, *, config: ml_collections.ConfigDict, schedule):
  """One optimiser step on a device's shard; gradients and BN statistics are averaged over 'batch'."""
  rng = step_rng(config.train.seed, state.step)

  def loss_fn(params):
    outputs, new_vars = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["frames"], train=True,
        rngs={"dropout": rng}, mutable=["batch_stats"])
    loss, metrics = losses.compute_loss(outputs, batch["label"], config)
    return loss, (metrics, outputs["logits"], new_vars["batch_stats"])

  (_, (metrics, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = dict(metrics)
  metrics.update(_accuracy(logits, batch["label"]))
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

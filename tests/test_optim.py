"""The optimiser equals PyTorch SGD/Adam with the TSM parameter groups, step for step."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import optax

from aknet_jax import config as config_lib
from aknet_jax.train import optim

torch = pytest.importorskip("torch")


def _config(**train):
  c = config_lib.base_config()
  c.train.update(train)
  return c


def _params(rng):
  return {
      "backbone": {"conv1": {"kernel": rng.normal(size=(3, 3, 2, 4))},
                   "bn1": {"scale": rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
                   "layer1_0": {"conv1": {"kernel": rng.normal(size=(1, 1, 4, 4)),
                                          "bias": rng.normal(size=(4,))}}},
      "new_fc": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))},
  }


def _torch_groups(p, config, new_classifier):
  """The TSM get_optim_policies groups, written from the reference (§5.2), as torch tensors."""
  t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
       for k, v in _flat(p).items()}
  wd = config.train.weight_decay
  fc_w, fc_b = (5, 10) if new_classifier else (1, 2)
  groups = [
      {"params": [t["backbone/conv1/kernel"], t["backbone/layer1_0/conv1/kernel"]], "lr_mult": 1, "wd": wd},
      {"params": [t["backbone/layer1_0/conv1/bias"]], "lr_mult": 2, "wd": 0.0},
      {"params": [t["backbone/bn1/scale"], t["backbone/bn1/bias"]], "lr_mult": 1, "wd": 0.0},
      {"params": [t["new_fc/kernel"]], "lr_mult": fc_w, "wd": wd},
      {"params": [t["new_fc/bias"]], "lr_mult": fc_b, "wd": 0.0},
  ]
  return t, groups


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


@pytest.mark.parametrize("kind,new_classifier", [("sgd", True), ("sgd", False), ("adam", True)])
def test_matches_pytorch_with_tsm_groups_clipping_and_step_schedule(kind, new_classifier):
  rng = np.random.default_rng(0)
  p0 = _params(rng)
  num_steps = 10
  config = _config(optimizer=kind, learning_rate=0.1 if kind == "sgd" else 0.01, num_steps=num_steps,
                   num_epochs=10, lr_steps=(4, 8), weight_decay=0.01, grad_clip=1.5, lr_policy="tsm")
  with jax.enable_x64(True):
    params = jax.tree_util.tree_map(jnp.asarray, p0)
    tx, schedule = optim.create_optimizer(config, params, num_steps, new_classifier=new_classifier)
    state = tx.init(params)
    tensors, groups = _torch_groups(p0, config, new_classifier)
    base = config.train.learning_rate
    if kind == "sgd":
      opt = torch.optim.SGD([{"params": g["params"], "weight_decay": g["wd"]} for g in groups],
                            lr=base, momentum=0.9)
    else:
      opt = torch.optim.Adam([{"params": g["params"], "weight_decay": g["wd"]} for g in groups], lr=base)
    targets = {k: rng.normal(size=v.shape) for k, v in _flat(p0).items()}
    for step in range(num_steps):
      # PyTorch: lr set per epoch from the milestones, times each group's multiplier.
      lr = base * 0.1 ** sum(step >= m for m in (4, 8))
      assert schedule(step) == pytest.approx(lr)
      for g, pg in zip(groups, opt.param_groups):
        pg["lr"] = lr * g["lr_mult"]
      opt.zero_grad()
      loss = sum(((tensors[k] - torch.tensor(targets[k])) ** 3).sum() for k in tensors)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(list(tensors.values()), 1.5)
      opt.step()
      grads = jax.grad(lambda q: sum(jnp.sum((v - targets[k]) ** 3) for k, v in _flat(q).items()))(params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    for k, v in _flat(params).items():
      np.testing.assert_allclose(np.asarray(v), tensors[k].detach().numpy(), rtol=2e-5, atol=1e-7,
                                 err_msg=k)


def test_num_steps_keeps_milestones_as_fractions_of_the_schedule():
  c = _config(num_steps=100, num_epochs=50, lr_steps=(20, 40), learning_rate=1.0, lr_decay=0.1)
  sched = optim.learning_rate_schedule(c, 100)
  assert float(sched(39)) == pytest.approx(1.0) and float(sched(40)) == pytest.approx(0.1)
  assert float(sched(80)) == pytest.approx(0.01)


@pytest.mark.parametrize("lr_steps,after_warmup", [((20, 40), (1.0, 0.1, 0.01)),
                                                   ((2, 40), (0.1, 0.1, 0.01))])
def test_warmup_leaves_the_milestones_where_the_schedule_puts_them(lr_steps, after_warmup):
  """As TDN's GradualWarmupScheduler over MultiStepLR: a linear ramp from lr / 100 over the
  warm-up, then the step decays at the same steps as without a warm-up (epochs 20 and 40 of 50:
  steps 40 and 80 of 100); a milestone inside the warm-up (epoch 2: step 4) applies from its end."""
  c = _config(num_steps=100, num_epochs=50, lr_steps=lr_steps, learning_rate=1.0, lr_decay=0.1,
              warmup_steps=10)
  sched = optim.learning_rate_schedule(c, 100)
  lr = [float(sched(i)) for i in range(100)]
  np.testing.assert_allclose(lr[:10], [0.01 + 0.99 * i / 10 for i in range(10)], rtol=1e-6)
  for (start, stop), value in zip(((10, 40), (40, 80), (80, 100)), after_warmup):
    np.testing.assert_allclose(lr[start:stop], value, rtol=1e-6)


def test_uniform_policy_is_plain_sgd_on_everything():
  c = _config(lr_policy="uniform")
  lr_mult, decay_mult = optim.multipliers(c, _params(np.random.default_rng(0)), new_classifier=True)
  assert set(jax.tree_util.tree_leaves(lr_mult)) == {1.0}
  assert set(jax.tree_util.tree_leaves(decay_mult)) == {1.0}


def test_stage2_fresh_heads_take_the_plain_multipliers():
  """The decision for stage 2 (README, "Stage-2 learning rates"): AK-Net's fresh parts (heatmap,
  T, head, aux head) train at x1 weights / x2 biases like the compacted ones, not TSM's x5/x10,
  which the stage-1 classifier gets only when it is new on top of pretrained weights."""
  from aknet_jax import models  # pylint: disable=g-import-not-at-top
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  cfg = load_config("synthetic", "tiny,stage=2")
  params = models.variable_shapes(cfg, "aknet")["params"]
  lr_mult, decay_mult = optim.multipliers(cfg, params, new_classifier=False)
  assert lr_mult["head"]["kernel"] == 1.0 and lr_mult["head"]["bias"] == 2.0
  assert decay_mult["head"]["kernel"] == 1.0 and decay_mult["head"]["bias"] == 0.0
  assert all(m in (1.0, 2.0) for m in jax.tree_util.tree_leaves(lr_mult))
  stage1 = optim.multipliers(cfg, models.variable_shapes(cfg, "video_net")["params"],
                             new_classifier=True)[0]
  assert stage1["new_fc"]["kernel"] == 5.0 and stage1["new_fc"]["bias"] == 10.0

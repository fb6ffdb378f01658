"""TEA-ResNet-50 against our torch reference (`aknet_jax.torch_reference_tea`, written from the
paper and a reading of the official code, with its state-dict keys): parity through the
converter, Q's block, compaction into AK-Net, the convert CLI and the recipe variants."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aknet_jax import config as config_lib
from aknet_jax import models
from aknet_jax.checkpoints.torch_layout import torch_to_variables
from aknet_jax.models import point_net
from aknet_jax.models import tea
from aknet_jax.models.batch_norm import norm_layer

T, K, WIDTH = 4, 5, 16


def _lib():
  pytest.importorskip("torch")
  from aknet_jax import torch_reference, torch_reference_tea  # pylint: disable=g-import-not-at-top
  return torch_reference, torch_reference_tea


def _config(width=WIDTH, t=T, k=K):
  c = config_lib.base_config()
  c.model.backbone, c.model.depth, c.model.width, c.model.dropout = "tea", 50, width, 0.0
  c.dataset.num_segments, c.dataset.num_classes = t, k
  return c


def _official(ref, lib, seed=7):
  """TSN(TEANet) as the official training script saves it: DataParallel `module.` keys."""
  ref_lib, _ = lib
  torch = ref_lib.torch
  torch.manual_seed(seed)
  net = ref_lib.TSN(ref, T, K).eval()
  return net, {f"module.{k}": v for k, v in net.state_dict().items()}


def test_widths_follow_res2net_26w_4s():
  assert [tea.split_width(p) for p in (64, 128, 256, 512)] == [26, 52, 104, 208]
  assert tea.mid_width(64) == 104


def test_temporal_conv_init_is_identity_or_half_shift():
  x = jax.random.normal(jax.random.key(0), (2 * T, 3, 3, 6))
  fixed = tea.TemporalConv(T, "fixed")
  np.testing.assert_array_equal(fixed.apply(fixed.init(jax.random.key(1), x), x), x)
  shift = tea.TemporalConv(T, "shift")
  y = np.asarray(shift.apply(shift.init(jax.random.key(1), x), x)).reshape(2, T, 3, 3, 6)
  x5 = np.asarray(x).reshape(2, T, 3, 3, 6)
  np.testing.assert_array_equal(y[:, :-1, ..., :3], x5[:, 1:, ..., :3])  # Reads t + 1.
  np.testing.assert_array_equal(y[:, 1:, ..., 3:], x5[:, :-1, ..., 3:])  # Reads t - 1.
  assert not y[:, -1, ..., :3].any() and not y[:, 0, ..., 3:].any()


@pytest.mark.parametrize("size", [40])
def test_tea_model_parity_with_converted_torch_reference(size):
  """Whole TEA-R50 (width 16) from official-style keys; logits <= 1e-4 relative, eval-mode BN."""
  lib = _lib()
  torch = lib[0].torch
  net, state = _official(lib[1].tea(50, WIDTH, T, seed=3), lib)
  assert "module.base_model.layer1.0.me.conv2.weight" in state
  assert "module.base_model.layer2.1.shifts.3.conv.weight" in state
  config = _config()
  variables = torch_to_variables(state, config)
  frames = np.random.RandomState(1).randn(2, T, size, size, 3).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = jax.jit(lambda v, x: models.build(config, "video_net").apply(v, x, train=False))(
        variables, frames)
  with torch.no_grad():
    want = net(frames).numpy()
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  print(f"tea-R50 width {WIDTH} {size}px: max |diff| / max |logit| = {err:.1e}")
  assert err < 1e-4, err


def test_tea_train_mode_bn_parity():
  """Train-mode BN (batch statistics, no partial BN) through the whole net, dropout 0."""
  lib = _lib()
  torch = lib[0].torch
  ref = lib[1].tea(50, WIDTH, T, seed=4)
  net, state = _official(ref, lib)
  config = _config()
  config.model.partial_bn = False
  variables = torch_to_variables(state, config)
  frames = np.random.RandomState(2).randn(2, T, 64, 64, 3).astype(np.float32)
  model = models.build(config, "video_net")
  with jax.default_matmul_precision("highest"):
    got, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, frames)
  net.train()
  with torch.no_grad():
    want = net(frames).numpy()
  err = np.abs(np.asarray(got["logits"]) - want).max() / np.abs(want).max()
  assert err < 1e-4, err


def test_width_8_runs_with_one_me_channel():
  """At base width 8 ME's c // 16 would be 0 (layer1: 12 channels): we keep one, as the torch
  reference does."""
  lib = _lib()
  torch = lib[0].torch
  net, state = _official(lib[1].tea(50, 8, T, seed=8), lib)
  assert state["module.base_model.layer1.0.me.conv1.weight"].shape[0] == 1
  config = _config(width=8)
  frames = np.random.RandomState(4).randn(1, T, 32, 32, 3).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = jax.jit(lambda v, x: models.build(config, "video_net").apply(v, x, train=False))(
        torch_to_variables(state, config), frames)
  with torch.no_grad():
    want = net(frames).numpy()
  assert np.abs(np.asarray(got) - want).max() / np.abs(want).max() < 1e-4


def _compact_config(stage):
  c = _config()
  c.stage = stage
  c.dataset.image_size, c.model.aknet.split = 32, "res4"
  c.model.aknet.se_reduction, c.model.aknet.transform_rank = 4, 4
  return config_lib.validate(c)


def test_compacted_tea_net_keeps_res2net_splits_and_drops_me_in_q():
  """Q copies conv1, the split convs (summed over width), conv3 and BNs; ME / temporal convs stay
  out; the compacted AK-Net runs."""
  config1, config2 = _compact_config("1"), _compact_config("2")
  shapes = models.variable_shapes(config1, "video_net")
  rng = np.random.default_rng(0)  # Random values of the right shapes: no init to compile.
  stage1 = jax.tree_util.tree_map_with_path(
      lambda p, s: (rng.uniform(0.5, 1.5, s.shape) if p[-1].key in ("var", "scale")
                    else 0.2 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  stage2 = models.compact(stage1, config2, jax.random.key(1))
  q = stage2["params"]["points"]
  assert set(q) == {"layer4_0", "layer4_1", "layer4_2"}
  for name, block in q.items():
    assert "me" not in block and not any(k.startswith("shifts_") for k in block)
    src = stage1["params"]["backbone"][name]
    for i in range(tea.SCALE - 1):
      np.testing.assert_allclose(block[f"convs_{i}"]["kernel"],
                                 np.asarray(src[f"convs_{i}"]["kernel"]).sum(axis=1), rtol=1e-6)
    cin = 4 * 4 * WIDTH if name == "layer4_0" else 4 * 8 * WIDTH
    assert block["conv1"]["kernel"].shape == (1, cin, tea.mid_width(8 * WIDTH))
  frames = jax.random.normal(jax.random.key(2), (2, T, 32, 32, 3))
  logits = jax.jit(lambda v, x: models.build(config2, "aknet").apply(v, x, train=False))(stage2,
                                                                                         frames)
  assert logits.shape == (2, K) and np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("cin,stride", [(64, 2), (128, 1)])
def test_point_block_matches_torch_block_without_temporal_parts(cin, stride):
  """Q's block == the torch TEA block with ME and temporal convs as identities and every 3x3 conv
  a 3x1 one, on points laid out along H (W = 1)."""
  lib = _lib()
  torch = lib[0].torch
  nn_t = torch.nn
  planes, n = 32, 9
  torch.manual_seed(0)
  ref = lib[1].TEABlock(cin, planes, stride, T, stage=cin != 4 * planes)
  ref.me = nn_t.Identity()
  ref.shifts = nn_t.ModuleList([nn_t.Identity() for _ in range(tea.SCALE)])
  w = tea.split_width(planes)
  ref.convs = nn_t.ModuleList([nn_t.Conv2d(w, w, (3, 1), (stride, 1), (1, 0), bias=False)
                               for _ in range(tea.SCALE - 1)])
  if ref.stage:
    ref.pool = nn_t.AvgPool2d((3, 1), (stride, 1), (1, 0))
    ref.downsample[0] = nn_t.Conv2d(cin, 4 * planes, 1, (stride, 1), bias=False)
  lib[0].randomize_tdn(ref, 1).eval()
  params, stats = {}, {}
  for name, m in ref.named_modules():
    flax_name = name.replace("convs.", "convs_").replace("bns.", "bns_").replace(
        "downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
    if isinstance(m, nn_t.Conv2d):
      kernel = m.weight.detach().numpy()[..., 0].transpose(2, 1, 0)  # (O, I, 3, 1) -> (3, I, O)
      params[flax_name] = {"kernel": jnp.asarray(kernel)}
    elif isinstance(m, nn_t.BatchNorm2d):
      params[flax_name] = {"scale": jnp.asarray(m.weight.detach().numpy()),
                           "bias": jnp.asarray(m.bias.detach().numpy())}
      stats[flax_name] = {"mean": jnp.asarray(m.running_mean.numpy()),
                          "var": jnp.asarray(m.running_var.numpy())}
  conv = functools.partial(point_net._conv1d, use_bias=False,  # pylint: disable=protected-access
                           dtype=jnp.float32)
  norm = norm_layer(train=False, momentum=0.9, axis_name=None, dtype=jnp.float32)
  block = tea.Res2Bottleneck1D(planes, stride, conv, norm)
  x = np.random.RandomState(3).randn(2, n, cin).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = block.apply({"params": params, "batch_stats": stats}, jnp.asarray(x))
  with torch.no_grad():
    want = ref(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)[..., None])))
  np.testing.assert_allclose(np.asarray(got), want[..., 0].numpy().transpose(0, 2, 1),
                             rtol=1e-4, atol=1e-5)


def test_tea_checkpoint_through_the_cli_and_its_errors(tmp_path):
  """`convert --source=tea` of an official-style training file (DataParallel keys under
  'state_dict') == the direct conversion; files / configs of other kinds are one-line errors."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from aknet_jax import checkpoints, convert  # pylint: disable=g-import-not-at-top
  from conftest import ROOT, load_config  # pylint: disable=g-import-not-at-top
  lib = _lib()
  torch = lib[0].torch
  _, state = _official(lib[1].tea(50, WIDTH, 4, seed=5), lib, seed=6)
  state = {k: v for k, v in state.items() if not k.startswith("module.new_fc.")}
  state.update({f"module.new_fc.{n}": v
                for n, v in torch.nn.Linear(32 * WIDTH, 8).state_dict().items()})
  torch.save({"epoch": 50, "arch": "tea50", "state_dict": state}, tmp_path / "tea.pth.tar")
  spec = f"tiny,backbone=tea,depth=50,width={WIDTH}"
  out = subprocess.run([sys.executable, "-m", "aknet_jax.convert", "--source=tea",
                        f"--checkpoint={tmp_path / 'tea.pth.tar'}",
                        f"--config=configs/synthetic.py:{spec}", f"--workdir={tmp_path / 'run'}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  variables, _ = checkpoints.read_variables(str(tmp_path / "run" / "stage1" / "checkpoints"), 0)
  direct = torch_to_variables(state, load_config("synthetic", spec + ",stage=1"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.asarray, direct),
                         variables)

  def error(source, config):
    with pytest.raises(ValueError) as e:
      convert.convert_checkpoint(source, str(tmp_path / "tea.pth.tar"),
                                 load_config("synthetic", config), str(tmp_path / "x"))
    assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "x")
    return str(e.value)

  assert "--source=tea needs a TEA config, but config.model.backbone='tsm'" in error("tea", "tiny")
  assert "is a TEA checkpoint (key 'module.base_model.layer1.0.me.conv1.weight'): use " \
         "--source=tea" in error("tsm", "tiny")
  assert "is a TEA checkpoint" in error("torchvision", "tiny")
  tsm_file = tmp_path / "tsm.pth"
  torch.save({"module.new_fc.weight": torch.zeros(8, 4)}, tsm_file)
  with pytest.raises(ValueError, match=r"has no TEA modules \(me, shifts\): use --source=tsm"):
    convert.convert_checkpoint("tea", str(tsm_file), load_config("synthetic", spec), str(tmp_path))


def test_tea_macs_within_10_percent_of_the_paper_and_params_match_torch():
  from aknet_jax import macs  # pylint: disable=g-import-not-at-top
  config = macs.row_config("tea", None)
  assert abs(models.gmacs(config, "video_net") / macs.PAPER_GFLOPS[("tea", None)] - 1) < 0.10
  lib = _lib()
  ref = lib[1].TEANet(64, 8)
  want = sum(p.numel() for p in ref.parameters()) + 2048 * 174 + 174
  assert models.param_count(config, "video_net") == want


def test_tea_recipe_variants():
  """SSv1 / SSv2 `backbone=tea`: the official TEA recipe (scripts/train_tea_something_rgb_8f.sh)."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  for dataset in ("ssv1", "ssv2"):
    c = load_config(dataset, "backbone=tea")
    assert c.model.backbone == "tea" and c.train.lr_policy == "tsm"
    assert c.dataset.frames_per_segment == 1 and not c.model.partial_bn
    assert c.train.learning_rate == 0.02 and tuple(c.train.lr_steps) == (30, 40, 45)
    assert c.train.num_epochs == 50 and c.train.batch_size == 64 and c.model.dropout == 0.5
    assert load_config(dataset, "backbone=tsm").train.learning_rate == 0.01


class _FullResolutionME(tea.MotionExcitation):
  """ME as first written: the depthwise conv at full resolution, then the spatial mean."""

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    r, t = max(1, c // tea.REDUCTION), self.num_segments
    b = self.norm(name="bn1")(self.conv(r, (1, 1), padding="VALID", use_bias=False,
                                        name="conv1")(x))
    cb = self.conv(r, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=r, use_bias=False,
                   name="conv2")(b)
    b5, cb5 = b.reshape((n // t, t, h, w, r)), cb.reshape((n // t, t, h, w, r))
    diff = jnp.pad(cb5[:, 1:] - b5[:, :-1], [(0, 0), (0, 1), (0, 0), (0, 0), (0, 0)])
    y = diff.reshape((n, h, w, r)).mean(axis=(1, 2), keepdims=True)
    y = self.norm(name="bn3")(self.conv(c, (1, 1), padding="VALID", use_bias=False,
                                        name="conv3")(y))
    return x + x * (nn.sigmoid(y) - 0.5)


@pytest.mark.parametrize("shape,train", [((8, 7, 6, 32), True), ((4, 5, 5, 40), False),
                                         ((4, 3, 4, 12), True)])  # 12 channels: one ME channel.
def test_motion_excitation_from_window_means_equals_the_full_resolution_conv(shape, train):
  """ME takes conv2's spatial mean from b's nine tap-window means (at inference, conv1 and bn1
  run on x's window means): same variables, same values and gradients (to 1e-5) as the depthwise
  conv at full resolution it replaces. BN's statistics and affine are random, so bn1's shift
  (bias - mean * scale), which the inference form weighs by each window's share, is not 0."""
  from aknet_jax.models import conv as conv_lib  # pylint: disable=g-import-not-at-top
  conv = functools.partial(conv_lib.Conv, kernel_init=jax.nn.initializers.normal(0.3))
  norm = norm_layer(train=train, momentum=0.1, axis_name=None, dtype=jnp.float32)
  ours, ref = (m(T, conv, norm) for m in (tea.MotionExcitation, _FullResolutionME))
  x = jax.random.normal(jax.random.key(1), shape)
  v = ref.init(jax.random.key(0), x)
  keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(v))))
  v = jax.tree.map(lambda a: a + jax.random.uniform(next(keys), a.shape, minval=0.2), v)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(v)
  apply = lambda m: (lambda v, x: m.apply(v, x, mutable=["batch_stats"])[0])  # noqa: E731
  np.testing.assert_allclose(apply(ours)(v, x), apply(ref)(v, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), shape)
  grad = lambda m: jax.grad(lambda v, x: jnp.sum(apply(m)(v, x) * w), argnums=(0, 1))(v, x)
  (gv, gx), (rv, rx) = grad(ours), grad(ref)
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(rv)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_window_means_are_the_tap_windows_of_a_padded_3x3_conv():
  b = np.random.RandomState(0).randn(2, 5, 4, 3).astype(np.float32)
  rows = {0: slice(0, 4), 1: slice(0, 5), 2: slice(1, 5)}
  cols = {0: slice(0, 3), 1: slice(0, 4), 2: slice(1, 4)}
  want = np.stack([np.stack([b[:, rows[u], cols[v]].sum((1, 2)) for v in range(3)], 1)
                   for u in range(3)], 1) / 20
  np.testing.assert_allclose(tea.window_means(jnp.asarray(b)), want, rtol=1e-6, atol=1e-6)

"""`python -m aknet_jax.convert`: PyTorch files written here -> Orbax -> `main` eval and stage 2.

The TSM / TSN references are torchvision ResNets with the doc's shift (tests/test_parity_torch.py),
the TDN one the doc-written torch TDN of tests/test_tdn.py; all carry official key names.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from aknet_jax import checkpoints, convert, models
from aknet_jax.checkpoints import architecture
from aknet_jax.checkpoints.torch_layout import imagenet_to_variables, torch_to_variables
from aknet_jax.train import stages
from conftest import ROOT, load_config

torch = pytest.importorskip("torch")
# pylint: disable=g-import-not-at-top,wrong-import-position
from test_parity_torch import TSN, _make_tsm, _resnet, torchvision  # noqa: E402

T, K = 4, 8  # The tiny synthetic config: 4 segments, 8 classes.
TINY64 = "tiny,width=64"  # ResNet-18 of width 64: torchvision's.


class NotATensor:
  """Pickled by `torch.save`; a safe load must refuse to rebuild it."""


def _run(*args, timeout=600):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout)


def _cli(source, path, config, workdir, *extra):
  return _run("-m", "aknet_jax.convert", f"--source={source}", f"--checkpoint={path}",
              f"--config=configs/synthetic.py:{config}", f"--workdir={workdir}", *extra)


def _tsm_model(seed=0):
  return TSN(_make_tsm(_resnet(18, seed), T), T, K).eval()


def _official(model):
  """An official TSM training checkpoint: DataParallel keys, a NumPy `best_prec1` (old runs)."""
  return {"epoch": 45, "arch": "resnet18", "best_prec1": np.float64(51.5),
          "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def _variables(step_dir):
  return checkpoints.read_variables(os.path.dirname(step_dir), int(os.path.basename(step_dir)))


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def tsm(tmp_path_factory):
  """(torch model, its state dict, a workdir converted by the CLI from its official-style file)."""
  root = tmp_path_factory.mktemp("tsm")
  model = _tsm_model()
  torch.save(_official(model), root / "tsm.pth.tar")
  out = _cli("tsm", root / "tsm.pth.tar", TINY64, root / "run")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "wrote" in out.stdout
  return model, _official(model)["state_dict"], str(root / "run")


def test_tsm_checkpoint_becomes_a_stage1_checkpoint(tsm):
  _, state, workdir = tsm
  assert "module.base_model.layer1.0.conv1.net.weight" in state
  variables, meta = _variables(os.path.join(workdir, "stage1", "checkpoints", "0"))
  cfg = load_config("synthetic", f"{TINY64},stage=1")
  assert meta["architecture"] == architecture.record(cfg, "video_net")
  assert meta["converted_from"]["classifier"] == "checkpoint" and meta["step"] == 0
  direct = jax.tree_util.tree_map(np.asarray, torch_to_variables(state, cfg))
  _assert_trees_equal(variables, direct)


def test_tsn_checkpoint_trained_without_dropout_has_its_classifier_in_base_model_fc(tmp_path):
  """TSN with dropout 0 keeps a Linear(C, K) at `base_model.fc` instead of `new_fc` (doc 1.4)."""
  model = TSN(_resnet(18, 2), T, K)  # Its base_model.fc is an Identity: no keys.
  state = {f"module.base_model.{k}": v for k, v in model.base_model.state_dict().items()}
  state.update({f"module.base_model.fc.{k}": v for k, v in model.new_fc.state_dict().items()})
  torch.save({"state_dict": state}, tmp_path / "tsn.pth")
  step_dir = convert.convert_checkpoint("tsm", str(tmp_path / "tsn.pth"),
                                        load_config("synthetic", f"{TINY64},backbone=tsn"),
                                        str(tmp_path / "run"))
  variables, meta = _variables(step_dir)
  assert meta["architecture"]["backbone"] == "tsn"
  np.testing.assert_array_equal(variables["params"]["new_fc"]["kernel"],
                                model.new_fc.weight.detach().numpy().T)
  conv = model.base_model.layer4[1].conv1.weight.detach().numpy()
  np.testing.assert_array_equal(variables["params"]["backbone"]["layer4_1"]["conv1"]["kernel"],
                                conv.transpose(2, 3, 1, 0))


def test_main_eval_of_converted_checkpoint_gives_the_logits_of_torch_to_variables(
    tsm, tiny_data_dir, tmp_path):
  """`main --mode=eval` on the converted workdir, its eval step's inputs and logits recorded."""
  model, state, converted = tsm
  workdir = str(tmp_path / "run")
  shutil.copytree(converted, workdir)
  record = str(tmp_path / "eval.npz")
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from absl import app
      from aknet_jax import main
      from aknet_jax.train import step as train_step
      real, seen = train_step.pmapped_eval_step, []
      def recording(model, with_keypoints=False):
        p_eval = real(model, with_keypoints)
        def run(variables, frames):
          out = p_eval(variables, frames)
          seen.append((np.asarray(frames), np.asarray(out[0])))
          return out
        return run
      train_step.pmapped_eval_step = recording
      sys.argv = ["main", "--config=configs/synthetic.py:{TINY64},data_dir={tiny_data_dir}",
                  "--workdir={workdir}", "--mode=eval"]
      try:
        app.run(main.main)
      finally:
        np.savez({record!r},
                 frames=np.concatenate([f.reshape((-1,) + f.shape[2:]) for f, _ in seen]),
                 logits=np.concatenate([l.reshape(-1, l.shape[-1]) for _, l in seen]))
  """)
  out = _run("-c", script)
  assert out.returncode == 0, out.stderr[-4000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)["stage1"]
  assert results["step"] == 0 and results["num_examples"] == 16
  rec = np.load(record)
  frames, logits = rec["frames"], rec["logits"]
  assert frames.shape[1:] == (T, 32, 32, 3) and len(frames) >= 16

  cfg = load_config("synthetic", f"{TINY64},stage=1")
  direct = jax.jit(lambda v, x: models.build(cfg, "video_net").apply(v, x, train=False))(
      torch_to_variables(state, cfg), frames)
  np.testing.assert_allclose(logits, np.asarray(direct), rtol=1e-5,
                             atol=1e-6 * np.abs(logits).max())
  with torch.no_grad():
    want = model(frames).numpy()
  err = np.abs(logits - want).max() / np.abs(want).max()
  assert err < 1e-4, err


def test_stage2_builds_aknet_from_the_converted_checkpoint(tsm, tiny_data_dir, tmp_path,
                                                           monkeypatch):
  _, _, converted = tsm
  workdir = str(tmp_path / "run")
  shutil.copytree(converted, workdir)
  real, compacted = models.compact, []
  monkeypatch.setattr(models, "compact", lambda v, *a: compacted.append(v) or real(v, *a))
  cfg = load_config("synthetic", f"{TINY64},stage=2,data_dir={tiny_data_dir}")
  cfg.train.stage2_num_steps, cfg.eval.num_keypoint_images = 2, 0
  results = stages.train_and_evaluate(cfg, workdir)
  assert set(results) == {"stage2"} and results["stage2"]["num_examples"] == 16
  converted_vars, _ = _variables(os.path.join(converted, "stage1", "checkpoints", "0"))
  _assert_trees_equal(compacted[0], converted_vars)
  assert os.path.isdir(os.path.join(workdir, "stage2", "checkpoints", "2"))


class _Started(Exception):
  pass


def test_stage1_in_a_converted_workdir_starts_from_the_converted_weights(tsm, tiny_data_dir,
                                                                         tmp_path, monkeypatch):
  """stage=1 / both: the step-0 checkpoint is where stage 1 starts (fine-tuning), not a resume."""
  _, _, converted = tsm
  workdir = str(tmp_path / "run")
  shutil.copytree(converted, workdir)
  started = []

  def create_optimizer(config, params, *a, **kw):
    started.append((config.init_from, params, kw["new_classifier"]))
    raise _Started

  monkeypatch.setattr(stages.optim, "create_optimizer", create_optimizer)
  cfg = load_config("synthetic", f"{TINY64},stage=both,data_dir={tiny_data_dir}")
  with pytest.raises(_Started):
    stages.train_and_evaluate(cfg, workdir)
  init_from, params, new_classifier = started[0]
  assert init_from == os.path.join(workdir, "stage1", "checkpoints", "0")
  assert not new_classifier  # A trained classifier: no x5 / x10 lr (TSM's fc_lr5 off).
  want, _ = _variables(os.path.join(converted, "stage1", "checkpoints", "0"))
  _assert_trees_equal(jax.tree_util.tree_map(np.asarray, params), want["params"])


def test_torchvision_imagenet_file_initialises_the_backbone_only(tmp_path):
  torch.manual_seed(0)
  net = torchvision.models.resnet18()
  torch.save(net.state_dict(), tmp_path / "resnet18.pth")
  out = _cli("torchvision", tmp_path / "resnet18.pth", TINY64, tmp_path / "imagenet")
  assert out.returncode == 0, out.stderr[-3000:]
  variables, meta = _variables(str(tmp_path / "imagenet" / "checkpoints" / "0"))
  assert meta["backbone_only"] and meta["architecture"] == {"kind": "backbone", "backbone": "tsm",
                                                            "depth": 18, "width": 64}
  assert set(variables["params"]) == {"backbone"}  # The 1000-class fc is dropped.

  # Any class count can start from it (no num_classes in its meta); new_fc is fresh.
  cfg = load_config("synthetic", f"{TINY64},stage=1")
  with cfg.unlocked():
    cfg.init_from, cfg.dataset.num_classes = str(tmp_path / "imagenet"), 5
  init = stages.initial_variables(cfg, str(tmp_path / "run"), "1", jax.random.PRNGKey(0))
  assert stages.classifier_is_new(cfg)  # TSM's fc_lr5 from ImageNet: new_fc at x5 / x10 lr.
  np.testing.assert_array_equal(init["params"]["backbone"]["layer2_0"]["conv2"]["kernel"],
                                net.layer2[0].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(init["batch_stats"]["backbone"]["bn1"]["var"],
                                net.bn1.running_var.numpy())
  assert init["params"]["new_fc"]["kernel"].shape == (512, 5)


def test_imagenet_weights_for_tdn_follow_its_initialisation():
  """Reference doc 3.7: resnext_layer1 = layer1, conv1_5 = conv1 averaged over RGB x 12 channels;
  conv biases, mSE and shift are not in the file and keep their init."""
  torch.manual_seed(1)
  state = torchvision.models.resnet50().state_dict()
  cfg = load_config("synthetic", "tiny,backbone=tdn,depth=50,width=64")
  variables = imagenet_to_variables(state, cfg)
  b = variables["params"]["backbone"]
  for name in ("conv1", "conv2", "conv3", "downsample_conv"):
    np.testing.assert_array_equal(b["resnext_layer1_0"][name]["kernel"],
                                  b["layer1_0"][name]["kernel"])
    assert set(b["layer1_0"][name]) == {"kernel"}  # No conv bias.
  stats = variables["batch_stats"]["backbone"]
  np.testing.assert_array_equal(stats["resnext_layer1_2"]["bn3"]["mean"],
                                state["layer1.2.bn3.running_mean"].numpy())
  stem = state["conv1.weight"].numpy()  # (64, 3, 7, 7)
  want = np.repeat(stem.mean(axis=1, keepdims=True), 12, axis=1).transpose(2, 3, 1, 0)
  np.testing.assert_allclose(b["conv1_5"]["kernel"], want, rtol=1e-6)
  assert "mse" not in b["layer2_0"] and "shift" not in b["layer2_0"] and "bn1_5" not in b


def test_tdn_checkpoint_through_the_cli(tmp_path):
  from aknet_jax import torch_reference  # pylint: disable=g-import-not-at-top (torch extra)
  torch.manual_seed(0)
  ref = torch_reference.randomize_tdn(torch_reference.TDNNet(8, T), 5)
  fc = torch.nn.Linear(32 * 8, K)
  state = {f"module.base_model.{n}": v for n, v in ref.state_dict().items()}
  state.update({f"module.new_fc.{n}": v for n, v in fc.state_dict().items()})
  assert {"module.base_model.conv1_temp.weight",
          "module.base_model.layer4_bak.2.mse.conv2.weight"} <= set(state)
  torch.save({"epoch": 60, "state_dict": state}, tmp_path / "tdn.pth.tar")
  config = "tiny,backbone=tdn,depth=50"
  out = _cli("tdn", tmp_path / "tdn.pth.tar", config, tmp_path / "run")
  assert out.returncode == 0, out.stderr[-3000:]
  variables, meta = _variables(str(tmp_path / "run" / "stage1" / "checkpoints" / "0"))
  cfg = load_config("synthetic", config + ",stage=1")
  assert meta["architecture"] == architecture.record(cfg, "video_net")
  direct = jax.tree_util.tree_map(np.asarray, torch_to_variables(state, cfg))
  _assert_trees_equal(variables, direct)
  assert "use --source=tdn" in _error("tsm", tmp_path / "tdn.pth.tar", "tiny", tmp_path / "other")


# --- Errors: one line each, raised before anything is written. ------------------------------------


def _error(source, path, config, workdir, **kw) -> str:
  with pytest.raises(ValueError) as e:
    convert.convert_checkpoint(source, str(path), load_config("synthetic", config), str(workdir),
                               **kw)
  assert "\n" not in str(e.value)
  assert not os.path.exists(workdir)
  return str(e.value)


def test_class_count_mismatch_on_the_command_line(tsm, tmp_path):
  model, _, _ = tsm
  torch.save(_official(model), tmp_path / "tsm.pth")
  out = _cli("tsm", tmp_path / "tsm.pth", TINY64, tmp_path / "run", "--config.dataset.num_classes=10")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: checkpoint:"), out.stderr
  for part in ("8 classes", "num_classes=10", "num_classes=8 to keep", "--drop_classifier"):
    assert part in lines[0]
  assert not os.path.exists(tmp_path / "run")


def test_drop_classifier_starts_a_fresh_one(tsm, tmp_path):
  model, _, _ = tsm
  torch.save(_official(model), tmp_path / "tsm.pth")
  cfg = load_config("synthetic", TINY64)
  cfg.dataset.num_classes = 10
  step_dir = convert.convert_checkpoint("tsm", str(tmp_path / "tsm.pth"), cfg,
                                        str(tmp_path / "run"), drop_classifier=True)
  variables, meta = _variables(step_dir)
  assert meta["converted_from"]["classifier"] == "fresh"
  assert meta["architecture"]["num_classes"] == 10
  kernel = variables["params"]["new_fc"]["kernel"]
  assert kernel.shape == (512, 10) and 0.0008 < kernel.std() < 0.0012  # N(0, 0.001), as TSN.
  np.testing.assert_array_equal(variables["params"]["new_fc"]["bias"], np.zeros(10))
  stem = model.base_model.conv1.weight.detach().numpy()
  np.testing.assert_array_equal(variables["params"]["backbone"]["conv1"]["kernel"],
                                stem.transpose(2, 3, 1, 0))


def test_checkpoint_of_another_architecture_or_depth(tsm, tmp_path):
  model, _, _ = tsm
  torch.save(_official(model), tmp_path / "tsm.pth")
  msg = _error("tsm", tmp_path / "tsm.pth", f"{TINY64},depth=34", tmp_path / "a")
  assert msg.startswith("checkpoint: missing key 'layer1.2.") and "shape (" in msg
  msg = _error("tsm", tmp_path / "tsm.pth", f"{TINY64},depth=50", tmp_path / "b")
  assert ("'module.base_model.layer1.0.conv1.net.weight' has shape (64, 64, 3, 3), "
          "expected (64, 64, 1, 1)") in msg
  msg = _error("tsm", tmp_path / "tsm.pth", "tiny", tmp_path / "c")  # width 8
  assert "'module.base_model.conv1.weight' has shape (64, 3, 7, 7), expected (8, 3, 7, 7)" in msg
  msg = _error("tsm", tmp_path / "tsm.pth", f"{TINY64},backbone=tsn", tmp_path / "d")
  assert "backbone=tsm" in msg and ".net." in msg
  assert "use --source=tsm" in _error("torchvision", tmp_path / "tsm.pth", TINY64, tmp_path / "e")
  assert "backbone=tdn" in _error("tdn", tmp_path / "tsm.pth", TINY64, tmp_path / "f")

  state = {k: v for k, v in _official(model)["state_dict"].items() if "new_fc" not in k}
  torch.save(state, tmp_path / "headless.pth")
  assert "--drop_classifier" in _error("tsm", tmp_path / "headless.pth", TINY64, tmp_path / "g")

  torch.save(_resnet(18, 3).state_dict(), tmp_path / "imagenet.pth")
  msg = _error("tsm", tmp_path / "imagenet.pth", TINY64, tmp_path / "h")
  assert "1000 classes" in msg and "--source=torchvision" in msg
  msg = _error("torchvision", tmp_path / "imagenet.pth", f"{TINY64},depth=50", tmp_path / "i")
  assert "'layer1.0.conv1.weight' has shape (64, 64, 3, 3), expected (64, 64, 1, 1)" in msg


def test_files_that_are_not_checkpoints(tmp_path):
  (tmp_path / "notes.txt").write_text("not a checkpoint")
  msg = _error("tsm", tmp_path / "notes.txt", TINY64, tmp_path / "a")
  assert "is not a PyTorch checkpoint" in msg
  (tmp_path / "empty.pth").write_bytes(b"")
  msg = _error("tsm", tmp_path / "empty.pth", TINY64, tmp_path / "b")
  assert "is not a PyTorch checkpoint" in msg
  assert "no such file" in _error("tsm", tmp_path / "missing.pth", TINY64, tmp_path / "c")
  torch.save([1, 2, 3], tmp_path / "list.pth")
  msg = _error("tsm", tmp_path / "list.pth", TINY64, tmp_path / "d")
  assert "holds a list, not a state dict" in msg
  torch.save({"epoch": 3, "best_prec1": 1.0}, tmp_path / "meta.pth")
  assert "found 'epoch' -> int" in _error("tsm", tmp_path / "meta.pth", TINY64, tmp_path / "e")
  torch.save({"state_dict": {"conv1.weight": NotATensor()}}, tmp_path / "code.pth")
  msg = _error("tsm", tmp_path / "code.pth", TINY64, tmp_path / "f")
  assert "weights_only=True) refuses it" in msg and "NotATensor" in msg


def test_existing_checkpoints_are_not_overwritten(tsm, tmp_path):
  _, _, converted = tsm
  with pytest.raises(ValueError, match="stage1/checkpoints already holds checkpoints"):
    convert.convert_checkpoint("tsm", "unused.pth", load_config("synthetic", TINY64), converted)


def test_torch_is_needed_only_to_read_pytorch_files():
  script = textwrap.dedent("""
      import sys
      sys.modules["torch"] = None  # Any `import torch` now fails.
      import aknet_jax.checkpoints, aknet_jax.convert, aknet_jax.models, aknet_jax.train.optim
      from aknet_jax.checkpoints import pytorch
      try:
        pytorch.load_state_dict(sys.executable)
      except ValueError as e:
        print(e)
  """)
  out = _run("-c", script)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'needs torch: pip install -e ".[convert]"' in out.stdout

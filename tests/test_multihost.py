"""Multi-host: launch scripts, and 2 processes x 2 CPU devices on loopback = 1 process x 4 devices."""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from aknet_jax import checkpoints, distributed
from conftest import ROOT

SCRIPTS = ("launch/local.sh", "launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/benchmark_gpu.sh")


def _run(cmd, env=None, timeout=60):
  """subprocess.run in its own process group: on a timeout every process it started is killed."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"{' '.join(cmd)[:200]} ran past {timeout}s: {err[-3000:]}")
  return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_launch_scripts_pass_bash_n_and_shellcheck():
  for script in SCRIPTS:
    out = _run(["bash", "-n", script])
    assert out.returncode == 0, f"{script}: {out.stderr}"
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed: apt-get install -y shellcheck (.ci/run installs it)")
  out = _run(["shellcheck", *SCRIPTS])
  assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script,args,message", [
    ("launch/local.sh", ["-d", "2", "--", "--workdir=/tmp/w"], "-n NUM_PROCESSES is required"),
    ("launch/local.sh", ["-n", "2", "--", "--workdir=/tmp/w"], "-d DEVICES_PER_PROCESS is required"),
    ("launch/local.sh", ["-n", "two", "-d", "2", "--", "--workdir=/tmp/w"], "-n must be a positive"),
    ("launch/local.sh", ["-n", "2", "-d", "2", "--", "--config=c"], "need --workdir=DIR"),
    ("launch/tpu_pod.sh", ["-z", "us-central2-b", "--", "--workdir=/w"], "-t TPU_NAME is required"),
    ("launch/tpu_pod.sh", ["-t", "pod", "--", "--workdir=/w"], "-z ZONE is required"),
    ("launch/tpu_pod.sh", ["-t", "pod", "-z", "us-central2-b"], "arguments of aknet_jax.main"),
    ("launch/slurm.sbatch", [], "arguments of aknet_jax.main are missing"),
    ("launch/slurm.sbatch", ["--config=c"], "need --workdir=DIR"),
    ("launch/slurm.sbatch", ["--workdir=/w"], "submit this script with sbatch"),
    ("launch/benchmark_gpu.sh", [], "give the output directory first"),
    ("launch/benchmark_gpu.sh", ["/tmp/out", "tsm"], "unknown step 'tsm'; the steps are: tsm_torch_bf16"),
])
def test_launch_scripts_name_the_missing_argument(script, args, message):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  out = subprocess.run(["bash", script, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, env=env)
  assert out.returncode == 2
  assert message in out.stderr.strip().splitlines()[-1], out.stderr


def _fake_command(tmp_path, name):
  """An executable `name` on PATH that prints its arguments, one per line."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  path = bindir / name
  path.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
  path.chmod(0o755)
  return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_tpu_pod_runs_the_same_quoted_command_on_every_worker(tmp_path):
  env = _fake_command(tmp_path, "gcloud")
  out = _run(["bash", "launch/tpu_pod.sh", "-t", "pod", "-z", "us-central2-b", "-p", "proj",
              "-s", "pip install -e .", "--", "--config=configs/ssv2.py:backbone=tdn,stage=1",
              "--workdir=/mnt/runs/a b"], env=env)
  assert out.returncode == 0, out.stderr
  args = out.stdout.splitlines()
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert {"--zone=us-central2-b", "--worker=all", "--project=proj"} <= set(args)
  command = next(a for a in args if a.startswith("--command="))[len("--command="):]
  assert command.startswith("cd aknet-jax && pip install -e . && python3 -m aknet_jax.main ")
  # The remote shell must see the two MAIN_ARGS unchanged (the space in the workdir included).
  words = _run(["bash", "-c", f"set -- {command.split(' -m aknet_jax.main ', 1)[1]}; "
                'printf "%s\\n" "$@"']).stdout.splitlines()
  assert words == ["--config=configs/ssv2.py:backbone=tdn,stage=1", "--workdir=/mnt/runs/a b"]


def test_slurm_script_starts_main_under_srun(tmp_path):
  env = _fake_command(tmp_path, "srun")
  env.update(SLURM_JOB_ID="42", PYTHON="python3")
  out = _run(["bash", "launch/slurm.sbatch", "--config=configs/ssv2.py", "--workdir=/shared/r"],
             env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ["--kill-on-bad-exit=1", "python3", "-m", "aknet_jax.main",
                                     "--config=configs/ssv2.py", "--workdir=/shared/r"]


def test_gpu_benchmark_runs_the_named_steps_and_reports_a_crash_first_line_first(tmp_path):
  """A step that aborts (XLA's fatal line above a long thread dump) leaves that line in the
  report; only the named steps run, and a later step still runs after a failed one."""
  fake = tmp_path / "fake_python"
  fake.write_text(textwrap.dedent("""\
      #!/usr/bin/env bash
      [[ "$1" == -c ]] && { echo "jax 0 [fake] | torch 0 cuDNN 0"; exit 0; }
      if [[ "$*" == *backbone=tdn* ]]; then
        echo "F1205 19:47:01.5 pjrt.cc:99] Check failed: fake abort" >&2
        for i in $(seq 40); do echo "  File \"frame$i.py\", line $i in f" >&2; done
        exit 134
      fi
      echo "| table of $* |"
  """))
  fake.chmod(0o755)
  env = {**_fake_command(tmp_path, "nvidia-smi"), "PYTHON": str(fake)}
  out = _run(["bash", "launch/benchmark_gpu.sh", str(tmp_path / "out"), "tdn_torch_bf16",
              "tsm_torch_fp32"], env=env)
  assert out.returncode == 0, out.stderr
  report = (tmp_path / "out" / "report.md").read_text()
  assert "## tdn_torch_bf16" in report and "## tsm_torch_fp32" in report
  assert "## tsm_torch_bf16" not in report and "## aknet_bf16" not in report
  assert "(exit 134," in report
  assert "    F1205 19:47:01.5 pjrt.cc:99] Check failed: fake abort" in report
  assert "| table of -m aknet_jax.profile --config=configs/ssv2.py:backbone=tsm --against=torch" in report


def test_local_launcher_stops_the_others_when_one_process_fails(tmp_path):
  fake = tmp_path / "fake_python"
  fake.write_text(textwrap.dedent(f"""\
      #!/usr/bin/env bash
      if [[ "$1" == -c ]]; then exec {sys.executable} "$@"; fi
      for a in "$@"; do [[ "$a" == --process_id=1 ]] && {{ sleep 2; exit 3; }}; done
      echo "JAX_NUM_CPU_DEVICES=$JAX_NUM_CPU_DEVICES $*"
      exec sleep 60
  """))
  fake.chmod(0o755)
  out = _run(["bash", "launch/local.sh", "-n", "2", "-d", "3", "--", "--workdir=/tmp/w"],
             env={"PYTHON": str(fake)}, timeout=30)
  assert out.returncode == 3, out.stdout + out.stderr
  assert re.search(r"^\[0\] JAX_NUM_CPU_DEVICES=3 -m aknet_jax.main --workdir=/tmp/w "
                   r"--coordinator_address=127\.0\.0\.1:\d+ --num_processes=2 --process_id=0$",
                   out.stdout, re.M), out.stdout
  assert "stopping the others" in out.stderr


def test_explicit_coordinator_flags_are_checked_in_one_line():
  for args, field in [(("127.0.0.1:1", 2, None), "--process_id"),
                      (("127.0.0.1:1", 2, 2), "--process_id=2"),
                      (("localhost", 2, 0), "--coordinator_address"),
                      ((None, 2, 0), "--coordinator_address")]:
    with pytest.raises(ValueError, match=re.escape(field)) as e:
      distributed.initialize(*args)
    assert "\n" not in str(e.value)


def _loopback_available():
  try:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      s.listen(1)
    return True
  except OSError:
    return False


def _digest(tree) -> str:
  """sha256 over the leaves' bytes, dict keys sorted: written here, independent of the package."""
  h = hashlib.sha256()

  def walk(node):
    if isinstance(node, dict):
      for k in sorted(node):
        walk(node[k])
    else:
      h.update(np.ascontiguousarray(node).tobytes())
  walk(tree)
  return h.hexdigest()


def _tail(path, n=3000):
  with open(path) as f:
    return f.read()[-n:]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_like_one_with_four_devices_and_resume_in_one(tiny_data_dir, tmp_path):
  if not _loopback_available():
    pytest.skip("no loopback sockets here: the processes talk over 127.0.0.1")
  # Dropout stays on (tiny: 0.2): its keys fold in the global device index, the same 0..3 in
  # both layouts, so the masks agree too.
  arg = f"tiny,stage=1,batch=8,data_dir={tiny_data_dir}"
  two, ref, logs = tmp_path / "two", tmp_path / "ref", tmp_path / "logs"
  # PYTHON: launch/local.sh starts this interpreter (an unactivated venv's works too).
  cpu = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "PYTHON": sys.executable}
  # The 1-process 4-device reference is the same command: the pipeline cuts one global stream of
  # batches, of which each host reads its slice, so both layouts see the same global batches.
  reference = subprocess.Popen(
      [sys.executable, "-m", "aknet_jax.main", f"--config=configs/synthetic.py:{arg}",
       f"--workdir={ref}"],
      cwd=ROOT, env={**os.environ, **cpu, "JAX_NUM_CPU_DEVICES": "4"},
      stdout=open(tmp_path / "ref.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
  try:
    out = _run(["bash", "launch/local.sh", "-n", "2", "-d", "2", "-l", str(logs), "--",
                f"--config=configs/synthetic.py:{arg}", f"--workdir={two}"], timeout=900)
    assert out.returncode == 0, (out.stderr + _tail(logs / "process_0.log")
                                 + _tail(logs / "process_1.log"))
    reference.wait(timeout=600)
  finally:
    if reference.poll() is None:
      os.killpg(reference.pid, signal.SIGKILL)
  assert reference.returncode == 0, _tail(tmp_path / "ref.log")

  # Both processes held bit-identical variables at every save, equal to what process 0 wrote.
  reported = {}
  for p in (0, 1):
    with open(logs / f"process_{p}.log") as f:
      for step, digest, proc in re.findall(
          r"stage 1 step (\d+) variables: sha256 ([0-9a-f]{64}) on process (\d)", f.read()):
        reported.setdefault(int(step), {})[int(proc)] = digest
  assert sorted(reported) == [2, 4], reported
  for step in (2, 4):
    saved, meta = checkpoints.read_variables(str(two / "stage1" / "checkpoints"), step)
    assert meta["step"] == step
    assert reported[step][0] == reported[step][1] == _digest(saved)
    # ... and they match the 1-process 4-device run.
    want, _ = checkpoints.read_variables(str(ref / "stage1" / "checkpoints"), step)
    for path, a in jax.tree_util.tree_leaves_with_path(saved):
      b = dict(jax.tree_util.tree_leaves_with_path(want))[path]
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (np.abs(b).max() + 1e-6),
                                 err_msg=jax.tree_util.keystr(path))
  # Training moved the parameters between the two saves: the comparison is not of two inits.
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(checkpoints.read_variables(str(two / "stage1/checkpoints"), 2)[0]),
      jax.tree_util.tree_leaves(checkpoints.read_variables(str(two / "stage1/checkpoints"), 4)[0]))]
  assert any(moved)

  # Only process 0 wrote summaries and results; eval counted every example once over both hosts.
  assert len([f for f in os.listdir(two / "stage1") if f.startswith("events.out")]) == 1
  with open(two / "results.json") as f:
    two_results = json.load(f)["stage1"]
  with open(ref / "results.json") as f:
    ref_results = json.load(f)["stage1"]
  assert two_results["num_examples"] == ref_results["num_examples"] == 16
  assert two_results["step"] == 4
  assert abs(two_results["top1"] - ref_results["top1"]) <= 1.01 / 16

  # The 2-process checkpoint resumes in 1 process (1 device) for 2 more steps, then evaluates.
  out = _run([sys.executable, "-m", "aknet_jax.main",
              f"--config=configs/synthetic.py:{arg},steps=6", f"--workdir={two}"],
             env={**cpu, "JAX_NUM_CPU_DEVICES": "1"}, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "Resuming stage 1 from step 4" in out.stderr
  assert "JAX process 0/1" in out.stderr
  with open(two / "results.json") as f:
    resumed = json.load(f)["stage1"]
  assert resumed["step"] == 6 and resumed["num_examples"] == 16
  assert 0.0 <= resumed["top1"] <= 1.0
  final, _ = checkpoints.read_variables(str(two / "stage1" / "checkpoints"), 6)
  start, _ = checkpoints.read_variables(str(two / "stage1" / "checkpoints"), 4)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(final),
                                                      jax.tree_util.tree_leaves(start)))

"""Killed and preempted training processes resume to bit-identical parameters."""

import json
import os
import re
import signal

import faultlib


def test_sigkill_at_an_arbitrary_step_then_rerun_gives_bit_identical_parameters(
    tiny_data_dir, tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  workdir = str(tmp_path / "killed")
  cmd = faultlib.command(workdir, tiny_data_dir)
  training = faultlib.Training(cmd, ref["env"])
  # Past the step-2 checkpoint; early enough that a loaded machine cannot finish before the kill.
  seen = training.wait_for_step(3)
  training.signal(signal.SIGKILL)
  assert training.finish() == -signal.SIGKILL
  left = faultlib.steps(workdir)
  assert left and max(left) < faultlib.NUM_STEPS, (seen, left)
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  out = faultlib.run(cmd, ref["env"])
  assert out.returncode == 0, out.stderr[-4000:]
  resumed = int(re.search(r"Resuming stage 1 from step (\d+)", out.stderr).group(1))
  assert resumed == max(left)
  faultlib.assert_identical(faultlib.variables_at(workdir, faultlib.NUM_STEPS), ref["final"])
  with open(os.path.join(workdir, "results.json")) as f, \
       open(os.path.join(ref["workdir"], "results.json")) as g:
    assert json.load(f)["stage1"] == json.load(g)["stage1"]


def test_sigterm_saves_the_current_step_and_exits_then_resume_is_exact(
    tiny_data_dir, tmp_path_factory, tmp_path):
  ref = faultlib.reference(tmp_path_factory, tiny_data_dir)
  workdir = str(tmp_path / "preempted")
  cmd = faultlib.command(workdir, tiny_data_dir)
  training = faultlib.Training(cmd, ref["env"])
  training.wait_for_step(2)
  training.signal(signal.SIGTERM)
  assert training.finish() == 128 + signal.SIGTERM, training.text[-4000:]
  stop = re.search(r"stopped: preempted by SIGTERM: stage 1 saved its checkpoint at step (\d+)",
                   training.text)
  assert stop, training.text[-4000:]
  step = int(stop.group(1))
  assert 2 <= step < faultlib.NUM_STEPS
  assert max(faultlib.steps(workdir)) == step  # Saved on the notice, not only on the schedule.
  assert "Traceback" not in training.text

  out = faultlib.run(cmd, ref["env"])
  assert out.returncode == 0, out.stderr[-4000:]
  assert f"Resuming stage 1 from step {step}" in out.stderr
  faultlib.assert_identical(faultlib.variables_at(workdir, faultlib.NUM_STEPS), ref["final"])

"""The workdir's layout and its files other than checkpoints: one reader, one atomic writer.

  WORKDIR/results.json                       {'stage1': metrics, 'stage2': metrics}
  WORKDIR/stage<S>/checkpoints/<step>, best/ Orbax (aknet_jax.checkpoints)
  WORKDIR/stage<S>/per_class_accuracy.json   {'<class>': {'accuracy', 'num_examples', 'name'}}
  WORKDIR/stage<S>/keypoints/, eval/         keypoint pictures; summaries of --mode=eval
  WORKDIR/stage<S>/events.*                  clu summaries (TensorBoard)
"""

from __future__ import annotations

import json
import os

RESULTS = "results.json"
PER_CLASS = "per_class_accuracy.json"
STAGES = ("1", "2")
# The model each stage of the two-stage schedule trains (`models.build(config, kind)`).
STAGE_KINDS = {"1": "video_net", "2": "aknet"}


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, f"stage{stage}")


def checkpoint_dir(workdir: str, stage: str) -> str:
  return os.path.join(stage_dir(workdir, stage), "checkpoints")


def stage_of_kind(kind: str) -> str:
  """'1' for the stage-1 classifier (and a bare backbone), '2' for AK-Net."""
  return "2" if kind == "aknet" else "1"


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a temporary file renamed over the target): a kill leaves the old file
  or the new one, never half of one."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str, what: str = "file") -> dict:
  """A JSON object from `path`; one-line ValueError when it is unreadable or not an object."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read the {what} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: not a {what} (expected a JSON object)")
  return obj


def read_results(workdir: str) -> dict:
  """WORKDIR/results.json ({} before any stage finished)."""
  path = os.path.join(workdir, RESULTS)
  return read_json(path, RESULTS) if os.path.exists(path) else {}


def stage_result(workdir: str, stage: str, step: int | None = None) -> dict | None:
  """The stage's entry of results.json; with `step`, only if it was evaluated at that step."""
  entry = read_results(workdir).get(f"stage{stage}")
  if entry and (step is None or entry.get("step") == step):
    return entry
  return None


def record_results(workdir: str, stage: str, entry: dict, per_class: dict) -> None:
  """Writes the stage's entry of results.json and its per_class_accuracy.json."""
  results = read_results(workdir)
  results[f"stage{stage}"] = entry
  write_json(os.path.join(workdir, RESULTS), results)
  write_json(os.path.join(stage_dir(workdir, stage), PER_CLASS), per_class)

"""Shared fixtures: configs loaded from configs/, one tiny synthetic dataset per session."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Commands the tests start compile for real unless a test asks for the persistent cache.
os.environ.setdefault("AKNET_COMPILATION_CACHE", "")


def load_config(name: str, arg: str | None = None):
  """`configs/<name>.py:<arg>` as the CLI would load it."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data_dir holding synthetic_something/tiny, built once for the session."""
  from aknet_jax.data import pipeline  # Imported lazily: TF is slow to import.
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  cfg = load_config("synthetic", f"tiny,data_dir={data_dir}")
  pipeline.num_examples(cfg, cfg.dataset.train_split)  # Builds it.
  return data_dir

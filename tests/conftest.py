"""Shared fixtures: configs loaded from configs/, one tiny synthetic dataset per session."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The commands' own default cache (~/.cache) stays off: runs share the one below instead.
os.environ.setdefault("AKNET_COMPILATION_CACHE", "")


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """One persistent XLA cache per test run, for the pytest workers and every command they start:
  the tiny configs' steps compile once per run instead of once per test. Fresh each run (under
  pytest's temp root, shared by the xdist workers of this run), so no state crosses runs."""
  import jax  # Imported here: collection of the light tests stays fast.
  base = tmp_path_factory.getbasetemp()
  cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
  cache.mkdir(exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  yield str(cache)


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

"""Shared fixtures: configs loaded from configs/, one tiny synthetic dataset per session."""

import importlib.util
import os

import pytest

from aknet_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The commands' own default cache (~/.cache) stays off: runs share the one below instead.
os.environ.setdefault("AKNET_COMPILATION_CACHE", "")
# Most of the suite's time is XLA:CPU compiling tiny nets, which takes about half as long with
# LLVM optimisation level 1 as at the default (they run a little slower, which they can afford).
# XLA's fast-math stays off, so LLVM may not reorder floating-point arithmetic at either level;
# every tolerance is the same. Set here, before JAX starts a backend, so the workers and every
# command they start (environment inherited) get it; a level already in $XLA_FLAGS wins.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()
# The host allocator the commands set (cli.parse_flags), also before JAX starts: every worker's
# XLA:CPU calls reuse freed memory instead of faulting it in afresh.
host_memory.keep_freed_memory()


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` (each a minute or more on 2 cores) run first, in file order, the rest
  after them: under `-n 2` the long ones start early, and the run ends on short tests instead of
  one worker running the last long test alone. Nothing is deselected."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # Stable: file order kept.


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`-n N` (xdist's default `--dist load`) schedules by work stealing: each worker starts on its
  share of the ordered tests and an idle one takes half of what another has not started, so the
  slow tests at the front cannot leave one worker with most of the time. Other --dist modes:
  xdist's own."""
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import WorkStealingScheduling  # pylint: disable=g-import-not-at-top
  return WorkStealingScheduling(config, log)


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


@pytest.fixture
def one_block_per_stage(monkeypatch):
  """ResNet-50 with one bottleneck block per stage (resnet.STAGE_SIZES, restored after the test):
  every block kind, stride and temporal module of the net at a fraction of its tracing and
  compilation time, for tests whose behaviour does not depend on how often a stage repeats its
  block. Stage sizes are read when a model is built, so build the models inside the test."""
  from aknet_jax.models import resnet
  monkeypatch.setitem(resnet.STAGE_SIZES, 50, (1, 1, 1, 1))

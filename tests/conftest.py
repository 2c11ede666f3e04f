"""Test set-up: 8 fake CPU devices for sharding tests, fp32 matmuls, shared fixtures."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session and the processes it starts (the kill -9,
# multi-host and tool tests compile the same programs again in child processes).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"lift_jax_test_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402  (after the environment above, which jax reads at import)

from tests.tools import demo_world  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: longer than a few seconds; excluded by -m 'not slow'")


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
  """The demo's models, made once a session (`tests/tools/demo_world.py`)."""
  return demo_world.make(tmp_path_factory.mktemp("demo_world"))


@pytest.fixture(scope="session")
def demo_runs(demo_assets, tmp_path_factory):
  """README's demo command, run once per seed a session on the shared models."""
  runs = demo_world.Runs(demo_assets, tmp_path_factory.mktemp("demo_runs"))
  yield runs
  runs.close()

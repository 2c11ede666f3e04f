"""Fixtures of the real-geometry tests: the real assets folder (LIFT_JAX_REAL_ASSETS), skipped
with a reason when it is not set, so a fresh clone still passes."""

import os

import pytest

ENV = "LIFT_JAX_REAL_ASSETS"


@pytest.fixture(scope="session")
def real_assets() -> str:
  root = os.environ.get(ENV)
  if not root:
    pytest.skip(f"{ENV} is not set (point it at the shared real assets, e.g. ../shared/real)")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{ENV}={root!r} is not a folder")
  return root

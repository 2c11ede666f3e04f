"""The demo's models for the end-to-end tests, made once a session.

The demo pins its models' seed (one world whatever the run's seed), so a run of any seed that
finds them in WORKDIR/assets uses them instead of making them again (its world pretraining
takes about a minute on 2 cores). They are made by the demo's own runner, as a run makes them.
"""

import pathlib
import shutil

from configs import demo
from lift_jax.lift import runner


def make(parent: pathlib.Path) -> pathlib.Path:
  """The demo's WORKDIR/assets, made under `parent`."""
  work = parent / "world"
  runner.Run(demo.get_config(), str(work)).resolve_models(create=True)
  return work / "assets"


def copy_into(assets: pathlib.Path, workdir: pathlib.Path) -> None:
  shutil.copytree(assets, workdir / "assets", symlinks=True)

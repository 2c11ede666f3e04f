"""The demo for the end-to-end tests: its models made once a session, each seed run once.

The demo pins its models' seed (one world whatever the run's seed), so a run of any seed that
finds them in WORKDIR/assets uses them instead of making them again (its world pretraining
takes about a minute on 2 cores). They are made by the demo's own runner, as a run makes them.
README's demo command for one seed takes ~4 minutes on 2 cores (the claim test runs seeds 0-2).
"""

import os
import pathlib
import shutil
import subprocess
import sys

from configs import demo
from lift_jax.lift import runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIFT = os.path.join(ROOT, "tools", "lift.py")
# As a user runs it: one CPU device (the test session's 8 fake devices are not inherited).
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def make(parent: pathlib.Path) -> pathlib.Path:
  """The demo's WORKDIR/assets, made under `parent`."""
  work = parent / "world"
  runner.Run(demo.get_config(), str(work)).resolve_models(create=True)
  return work / "assets"


def copy_into(assets: pathlib.Path, workdir: pathlib.Path) -> None:
  shutil.copytree(assets, workdir / "assets", symlinks=True)


class Runs:
  """README's demo command (`tools/lift.py --config=configs/demo.py`), once per seed."""

  def __init__(self, assets: pathlib.Path, parent: pathlib.Path):
    self.assets, self.parent = assets, parent
    self.done: dict[int, tuple[pathlib.Path, subprocess.CompletedProcess]] = {}

  def get(self, seed: int) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """(work dir, the finished command) of the demo with `--config.seed=seed`."""
    if seed not in self.done:
      work = self.parent / f"seed{seed}"
      copy_into(self.assets, work)
      out = subprocess.run([sys.executable, LIFT, "--config=configs/demo.py",
                            f"--workdir={work}", f"--config.seed={seed}"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=1200)
      self.done[seed] = (work, out)
    return self.done[seed]

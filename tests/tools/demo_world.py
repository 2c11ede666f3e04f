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
  """README's demo command (`tools/lift.py --config=configs/demo.py`), once per seed.

  `start` launches several seeds side by side: most of a stage is one-threaded (process start,
  XLA compilation), so on 2 cores three runs together take about two thirds of the time of three in
  turn. `close` stops any still running (the session fixture calls it at the end).
  """

  def __init__(self, assets: pathlib.Path, parent: pathlib.Path):
    self.assets, self.parent = assets, parent
    self.running: dict[int, tuple[pathlib.Path, subprocess.Popen]] = {}
    self.done: dict[int, tuple[pathlib.Path, subprocess.CompletedProcess]] = {}

  def start(self, *seeds: int) -> None:
    for seed in seeds:
      if seed in self.running or seed in self.done:
        continue
      work = self.parent / f"seed{seed}"
      copy_into(self.assets, work)
      log = open(self.parent / f"seed{seed}.log", "w")
      proc = subprocess.Popen([sys.executable, LIFT, "--config=configs/demo.py",
                               f"--workdir={work}", f"--config.seed={seed}"], cwd=ROOT, env=ENV,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
      log.close()  # the child holds its own copy
      self.running[seed] = (work, proc)

  def get(self, seed: int) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """(work dir, the finished command; its output in `.stdout`) of `--config.seed=seed`."""
    if seed not in self.done:
      self.start(seed)
      work, proc = self.running.pop(seed)
      try:
        proc.wait(timeout=1800)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      output = (self.parent / f"seed{seed}.log").read_text()
      self.done[seed] = (work, subprocess.CompletedProcess(proc.args, proc.returncode, output, ""))
    return self.done[seed]

  def close(self) -> None:
    for _, proc in self.running.values():
      proc.kill()
      proc.wait()
    self.running.clear()

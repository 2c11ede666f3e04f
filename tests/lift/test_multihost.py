"""Two CPU processes (jax.distributed.initialize, gloo collectives) train like one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from tests.lift.test_train import batches, run_steps, trainer_on

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  port = str(_free_port())
  out = str(tmp_path / "params.npz")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.lift.multihost_worker", str(i), port, out],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0].decode() for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  single, _ = run_steps(trainer_on({"data": 1}, jax.devices()[:1]), batches())
  got = np.load(out)
  expected = [np.asarray(x) for x in jax.tree.leaves(single["params"])]
  assert len(got.files) == len(expected)
  for i, want in enumerate(expected):
    np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=0, atol=1e-5)

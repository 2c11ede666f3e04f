"""The train stage as 2 processes x 4 CPU devices (jax.distributed over gloo): it matches one
process, the final transformer is saved by both onto one path, and a SIGTERM sent to only one of
the two makes both save the same step and exit 0; the resumed run ends bit-identical to an
uninterrupted one."""

import os
import re
import signal
import time

import numpy as np
import pytest

from lift_jax.checkpoint.manager import TrainCheckpointer
from lift_jax.lift import loop
from tests.lift import tiny_run
from tests.stages import processes

STEPS = 12


def _train(workdir, count=2):
  return processes.start(["-m", "tests.lift.tiny_run", str(workdir), str(STEPS)], count)


def _finish(procs, timeout=400):
  logs = [p.communicate(timeout=timeout)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-3000:]}"
  return logs


@pytest.mark.slow
def test_two_processes_train_save_and_agree_on_sigterm(tmp_path):
  tiny_run.make_inputs(str(tmp_path / "inputs"))
  straight = tmp_path / "straight"
  _finish(_train(straight))
  assert sorted(os.listdir(tmp_path)) == ["inputs", "straight"]  # no temporary folder left over
  expected = tiny_run.final_params(str(straight))

  # One process on all 8 devices of this session gives the same weights.
  loop.run(tiny_run.config(str(tmp_path / "inputs"), STEPS), str(tmp_path / "one"))
  single = tiny_run.final_params(str(tmp_path / "one"))
  for key, want in expected.items():
    np.testing.assert_allclose(single[key], want, rtol=0, atol=1e-5, err_msg=key)

  work = tmp_path / "interrupted"
  ckpts = work / "checkpoints"
  procs = _train(work)
  deadline = time.time() + 300
  while not (ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts))):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, "no checkpoint"
    time.sleep(0.05)
  os.kill(procs[1].pid, signal.SIGTERM)  # only the second host is told to stop
  logs = _finish(procs)
  saved = [re.findall(r"SIGTERM: saving step (\d+)", log) for log in logs]
  assert saved[0] and saved[0] == saved[1], saved  # both hosts left at the same step
  step = TrainCheckpointer(str(ckpts)).latest_step()
  assert step == int(saved[0][0]) < STEPS
  assert not (work / "transformer").exists()

  _finish(_train(work))
  got = tiny_run.final_params(str(work))
  for key, want in expected.items():
    np.testing.assert_array_equal(got[key], want, err_msg=key)

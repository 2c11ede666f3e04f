"""tools/lift.py: bad inputs are named before heavy work; a run killed in training resumes exactly.

The end-to-end runs take minutes on 2 cores, so they are marked slow (run with `-m slow`).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIFT = os.path.join(ROOT, "tools", "lift.py")


# As a user runs it: one CPU device (the test session's 8 fake devices are not inherited).
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _run(workdir, *extra, timeout=900):
  return subprocess.run([sys.executable, LIFT, "--config=configs/demo.py", f"--workdir={workdir}",
                         *extra], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=timeout)


def test_missing_prompt_file_is_named_before_work(tmp_path):
  out = _run(tmp_path / "w", "--config.prompts=/nonexistent/prompts.txt", timeout=120)
  assert out.returncode == 2
  assert "prompt file /nonexistent/prompts.txt does not exist" in out.stderr
  assert not os.path.exists(tmp_path / "w" / "assets")


def test_bad_config_value_and_missing_stage_input_are_named(tmp_path):
  out = _run(tmp_path / "w", "--config.rounds=0", timeout=120)
  assert out.returncode == 2 and "rounds must be ≥ 1" in out.stderr
  out = _run(tmp_path / "w", "--stages=train", timeout=300)
  assert out.returncode == 2
  assert "stage round1/train needs" in out.stderr and "run it first" in out.stderr


def _final_params(workdir):
  from flax import nnx

  from lift_jax.checkpoint.tables import flat_variables
  from lift_jax.models import cogvideox
  model = cogvideox.load_transformer(os.path.join(workdir, "round1", "train", "transformer"))
  return {k: np.asarray(v[...]) for k, v in flat_variables(nnx.state(model)).items()}


@pytest.mark.slow
def test_killed_in_training_resumes_without_repeating_stages(tmp_path):
  straight = tmp_path / "straight"
  assert _run(straight).returncode == 0
  assert os.path.isfile(straight / "report.html")

  work = tmp_path / "killed"
  log = open(tmp_path / "killed.log", "w")
  proc = subprocess.Popen([sys.executable, LIFT, "--config=configs/demo.py", f"--workdir={work}"],
                          cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
  ckpts = work / "round1" / "train" / "checkpoints"
  deadline = time.time() + 600
  while not (ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts))):
    assert proc.poll() is None and time.time() < deadline, (
        "training never checkpointed:\n" + (tmp_path / "killed.log").read_text()[-3000:])
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the whole tree in the train stage
  proc.wait()
  assert not (work / "round1" / "train" / "DONE.json").exists()
  done_before = {s: json.loads((work / s / "DONE.json").read_text())
                 for s in ("round1/generate", "round1/score", "round1/prepare")}

  out = _run(work)
  assert out.returncode == 0, out.stderr[-2000:]
  for stage in done_before:
    assert f"[lift] {stage}: done, skipped" in out.stdout
  expected, got = _final_params(straight), _final_params(work)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

"""Run a stage command as N CPU processes of one jax.distributed job (gloo collectives, fake
devices per process), as on N hosts; for the multi-process stage tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(process: int, count: int, port: int, devices: int = 4) -> dict:
  """Environment of process `process` of `count` (no distributed variables for one process)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                      "JAX_PROCESS_ID")}
  env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", LIFT_JAX_COMPILATION_CACHE="")
  if count > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(count),
               JAX_PROCESS_ID=str(process))
  return env


def start(args: list[str], count: int, devices: int = 4, cwd: str = ROOT,
          log_dir: str | None = None) -> list[subprocess.Popen]:
  """Starts `python ARGS...` as `count` processes of one job."""
  port = free_port()
  procs = []
  for i in range(count):
    out = open(os.path.join(log_dir, f"log-{i}.txt"), "w") if log_dir else subprocess.PIPE
    procs.append(subprocess.Popen([sys.executable] + args, cwd=cwd,
                                  env=env_for(i, count, port, devices), stdout=out,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True))
  return procs


def run(args: list[str], count: int, devices: int = 4, timeout: float = 600) -> list[str]:
  """Runs `python ARGS...` as `count` processes; asserts each exits 0; returns their logs."""
  procs = start(args, count, devices)
  try:
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} of {count} exited {p.returncode}:\n{log[-4000:]}"
  return logs

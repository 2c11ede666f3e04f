"""Recommended accelerator flags: added unless the user set them, parsed by this jaxlib's XLA."""

import os
import subprocess
import sys

import pytest

from lift_jax.parallel import runtime_flags


def test_gpu_flags_are_added_and_the_users_own_win():
  env = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
  changed = runtime_flags.apply(environ=env)
  flags = env["XLA_FLAGS"].split()
  assert changed == {"XLA_FLAGS": env["XLA_FLAGS"]}
  assert flags[0] == "--xla_gpu_enable_latency_hiding_scheduler=false"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in flags
  assert "--xla_gpu_enable_pipelined_all_gather=true" in flags
  assert len(flags) == len(runtime_flags.GPU_XLA_FLAGS)
  assert runtime_flags.apply(environ=env) == {}  # idempotent


def test_tpu_gets_libtpu_args_cpu_gets_nothing_and_opt_out():
  env = {"JAX_PLATFORMS": "tpu"}
  runtime_flags.apply(environ=env)
  assert env["LIBTPU_INIT_ARGS"].split() == list(runtime_flags.TPU_LIBTPU_ARGS)
  assert "XLA_FLAGS" not in env
  env = {"JAX_PLATFORMS": "cpu"}
  assert runtime_flags.apply(environ=env) == {} and env == {"JAX_PLATFORMS": "cpu"}
  env = {"JAX_PLATFORMS": "tpu", "LIFT_JAX_RECOMMENDED_FLAGS": "0"}
  assert runtime_flags.apply(environ=env) == {} and "LIBTPU_INIT_ARGS" not in env


def test_memory_fraction_is_a_setting():
  env = {"JAX_PLATFORMS": "cpu"}
  assert runtime_flags.apply(memory_fraction=0.8, environ=env) == {
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8"}
  with pytest.raises(ValueError, match=r"memory_fraction=1.5 must be in \(0, 1\]"):
    runtime_flags.apply(memory_fraction=1.5, environ=env)


def test_this_jaxlib_knows_every_gpu_flag():
  """XLA aborts on an unknown XLA_FLAGS entry; the CPU backend parses the same flag table."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": " ".join(runtime_flags.GPU_XLA_FLAGS)}
  done = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(jnp.ones(2).sum())"],
                        env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "2.0"

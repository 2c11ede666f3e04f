"""Recommended XLA settings for accelerators, applied before JAX starts its backend.

On GPU the tools add the latency-hiding scheduler and the collective-pipelining / combining flags
MaxText runs with to `XLA_FLAGS`; on TPU the async-collective flags to `LIBTPU_INIT_ARGS`. A flag
the user already set (same name, any value) is left as the user set it, and
`LIFT_JAX_RECOMMENDED_FLAGS=0` turns the whole thing off. The GPU memory fraction is a setting
(`memory_fraction` in the configs, `XLA_PYTHON_CLIENT_MEM_FRACTION` underneath).

XLA reads these when the backend starts (the first `jax.devices()` or computation), so `apply` must
run before that; it says so in a warning when it is too late.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import MutableMapping, Sequence

GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
    "--xla_gpu_enable_all_gather_combine_by_dim=false",
    "--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
)
TPU_LIBTPU_ARGS = (
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
)
_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12",
                "jax_plugins.xla_cuda13")


def detect_platform(environ: MutableMapping[str, str] = os.environ) -> str:
  """'tpu', 'gpu' or 'cpu' without starting a JAX backend: JAX_PLATFORMS, else installed plugins."""
  requested = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
  if requested:
    return {"cuda": "gpu", "rocm": "gpu"}.get(requested, requested)
  if _installed("libtpu"):
    return "tpu"
  if any(_installed(name) for name in _GPU_PLUGINS):
    return "gpu"
  return "cpu"


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def merge_flags(existing: str, recommended: Sequence[str]) -> str:
  """`existing` plus each recommended `--name=value` whose name the user has not set."""
  names = {flag.split("=", 1)[0] for flag in existing.split()}
  added = [flag for flag in recommended if flag.split("=", 1)[0] not in names]
  return " ".join([existing.strip()] + added if existing.strip() else added)


def apply(platform: str | None = None, *, memory_fraction: float | None = None,
          environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
  """Sets the recommended flags for `platform` (detected if None); returns what it changed."""
  platform = platform or detect_platform(environ)
  changed: dict[str, str] = {}
  if memory_fraction is not None:
    if not 0.0 < float(memory_fraction) <= 1.0:
      raise ValueError(f"memory_fraction={memory_fraction} must be in (0, 1]")
    changed["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(float(memory_fraction))
  if environ.get("LIFT_JAX_RECOMMENDED_FLAGS", "1") != "0":
    variable, flags = {"gpu": ("XLA_FLAGS", GPU_XLA_FLAGS),
                       "tpu": ("LIBTPU_INIT_ARGS", TPU_LIBTPU_ARGS)}.get(platform, (None, ()))
    if variable:
      merged = merge_flags(environ.get(variable, ""), flags)
      if merged != environ.get(variable, ""):
        changed[variable] = merged
  if changed and environ is os.environ and _backend_started():
    warnings.warn(f"JAX's backend is already running, so {sorted(changed)} take effect only in "
                  f"new processes; call lift_jax.runtime.setup() before using JAX", RuntimeWarning)
  environ.update(changed)
  return changed


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False

"""Process start-up shared by the tools: the persistent compilation cache and multi-host init."""

from __future__ import annotations

import os

from absl import logging as absl_logging

from lift_jax.parallel import runtime_flags

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "lift_jax", "jax_compilation")


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache so a second launch of a job does not recompile.

  Directory: `cache_dir`, else $LIFT_JAX_COMPILATION_CACHE, else ~/.cache/lift_jax/jax_compilation.
  An empty string ("" or LIFT_JAX_COMPILATION_CACHE=) disables it. Returns the directory used.
  """
  import jax

  path = cache_dir if cache_dir is not None else os.environ.get("LIFT_JAX_COMPILATION_CACHE",
                                                                 DEFAULT_CACHE_DIR)
  if not path:
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def setup(compilation_cache: str | None = None, memory_fraction: float | None = None) -> str | None:
  """What every tool does first: the recommended accelerator flags and memory fraction
  (`parallel.runtime_flags`), quiet library INFO logs, the compilation cache."""
  runtime_flags.apply(memory_fraction=memory_fraction)
  absl_logging.set_verbosity(absl_logging.WARNING)
  return enable_compilation_cache(compilation_cache)

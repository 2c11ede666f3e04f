"""The conversion driver behind `tools/convert_checkpoint.py`: one row per model kind.

Each kind names its loader (PyTorch folder -> NNX model, streamed onto devices) and its saver
(NNX model -> converted checkpoint). Imports are lazy so a kind costs nothing until used.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

# kind -> (module, load function, save function)
KINDS: dict[str, tuple[str, str, str]] = {
    "cogvideox-transformer": ("lift_jax.models.cogvideox.loading", "load_transformer",
                              "save_transformer"),
    "t5-encoder": ("lift_jax.models.t5.params", "load_encoder", "save_encoder"),
}


def _functions(kind: str):
  if kind not in KINDS:
    raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(KINDS)}")
  module_name, load_name, save_name = KINDS[kind]
  module = importlib.import_module(module_name)
  return getattr(module, load_name), getattr(module, save_name)


def convert(kind: str, src: str, dst: str, *, dtype: str = "float32", overwrite: bool = False,
            progress: bool = True, **load_kwargs: Any) -> dict[str, Any]:
  """Converts `src` (a PyTorch folder) into a converted checkpoint at `dst`; returns a summary."""
  load, save = _functions(kind)
  start = time.perf_counter()
  model = load(src, dtype=dtype, progress=progress, **load_kwargs)
  loaded = time.perf_counter()
  save(model, dst, overwrite=overwrite)
  from flax import nnx
  n_params = sum(x.size for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param)))
  return {"kind": kind, "src": src, "dst": dst, "dtype": dtype, "parameters": int(n_params),
          "load_s": round(loaded - start, 2), "save_s": round(time.perf_counter() - loaded, 2)}

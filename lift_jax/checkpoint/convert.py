"""The conversion driver behind `tools/convert_checkpoint.py`: one row per model kind.

Each kind names, in its module, the loader (PyTorch folder or converted checkpoint -> NNX model,
streamed onto devices), the saver (NNX model -> converted checkpoint) and, where supported, the
exporter back to the PyTorch layout. Imports are lazy so a kind costs nothing until used.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, NamedTuple

import jax
from flax import nnx


class Kind(NamedTuple):
  module: str
  load: str
  save: str
  export: str | None = None
  # Optional streaming converter `(src, dst, dtype, overwrite, progress) -> n_params` that never
  # holds the whole model (what full-size conversions use).
  stream: str | None = None


KINDS: dict[str, Kind] = {
    "cogvideox-transformer": Kind("lift_jax.models.cogvideox.loading", "load_transformer",
                                  "save_transformer", "export_diffusers", "convert_transformer"),
    "cogvideox-vae": Kind("lift_jax.models.cogvideox.vae_params", "load_vae", "save_vae"),
    "t5-encoder": Kind("lift_jax.models.t5.params", "load_encoder", "save_encoder"),
    "siglip-vision": Kind("lift_jax.models.siglip.params", "load", "save"),
    "intern-vit": Kind("lift_jax.models.intern_vit.params", "load", "save"),
    "llama": Kind("lift_jax.models.llama.params", "load", "save"),
    "vila-critic": Kind("lift_jax.models.critic.vila", "load_critic", "save_critic"),
}


def _function(kind: str, role: str):
  if kind not in KINDS:
    raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(KINDS)}")
  name = getattr(KINDS[kind], role)
  if name is None:
    raise ValueError(f"kind {kind!r} cannot be exported to the PyTorch layout yet")
  return getattr(importlib.import_module(KINDS[kind].module), name)


def convert(kind: str, src: str, dst: str, *, dtype: str = "float32", overwrite: bool = False,
            to: str = "lift_jax", progress: bool = True, **load_kwargs: Any) -> dict[str, Any]:
  """Converts `src` into `dst`; returns a summary.

  to="lift_jax": `src` is a PyTorch folder (or converted checkpoint), `dst` a converted checkpoint.
  to="pytorch": `src` is anything the loader reads, `dst` a folder in the upstream PyTorch layout.
  """
  if to not in ("lift_jax", "pytorch"):
    raise ValueError(f"to must be 'lift_jax' or 'pytorch', got {to!r}")
  start = time.perf_counter()
  if to == "lift_jax" and KINDS.get(kind, Kind("", "", "")).stream and not load_kwargs:
    n_params = _function(kind, "stream")(src, dst, dtype=dtype, overwrite=overwrite,
                                         progress=progress)
    return {"kind": kind, "src": src, "dst": dst, "to": to, "dtype": dtype,
            "parameters": int(n_params), "seconds": round(time.perf_counter() - start, 2)}
  load = _function(kind, "load")
  write = _function(kind, "save" if to == "lift_jax" else "export")
  model = load(src, dtype=dtype, progress=progress, **load_kwargs)
  loaded = time.perf_counter()
  write(model, dst, overwrite=overwrite)
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return {"kind": kind, "src": src, "dst": dst, "to": to, "dtype": dtype,
          "parameters": int(n_params), "load_s": round(loaded - start, 2),
          "write_s": round(time.perf_counter() - loaded, 2)}

"""The conversion driver behind `tools/convert_checkpoint.py`: the kinds are the models' specs.

Every spec converts the same way (`ModelSpec.convert` streams upstream tensors onto their shards
and into the output in groups, never holding the whole model) and exports the same way (load,
then `ModelSpec.export` writes the upstream layout).
"""

from __future__ import annotations

import time
from typing import Any

import jax
from flax import nnx

from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.models.cogvideox import params as cogvideox_params
from lift_jax.models.cogvideox import vae_params
from lift_jax.models.critic import params as critic_params
from lift_jax.models.intern_vit import params as intern_vit_params
from lift_jax.models.llama import params as llama_params
from lift_jax.models.siglip import params as siglip_params
from lift_jax.models.t5 import params as t5_params

SPECS: tuple[ModelSpec, ...] = (cogvideox_params.SPEC, vae_params.SPEC, t5_params.SPEC,
                                siglip_params.SPEC, intern_vit_params.SPEC, llama_params.SPEC,
                                critic_params.SPEC)
KINDS: dict[str, ModelSpec] = {spec.kind: spec for spec in SPECS}


def spec(kind: str) -> ModelSpec:
  if kind not in KINDS:
    raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(KINDS)}")
  return KINDS[kind]


def convert(kind: str, src: str, dst: str, *, dtype: str = "float32", overwrite: bool = False,
            to: str = "lift_jax", progress: bool = True, **load_kwargs: Any) -> dict[str, Any]:
  """Converts `src` into `dst`; returns a summary.

  to="lift_jax": `src` is a PyTorch folder, `dst` a converted checkpoint (streamed).
  to="pytorch": `src` is anything the loader reads, `dst` a folder in the upstream PyTorch layout.
  """
  if to not in ("lift_jax", "pytorch"):
    raise ValueError(f"to must be 'lift_jax' or 'pytorch', got {to!r}")
  model_spec = spec(kind)
  start = time.perf_counter()
  if to == "lift_jax":
    n_params = model_spec.convert(src, dst, dtype=dtype, overwrite=overwrite, progress=progress,
                                  **load_kwargs)
  else:
    model = model_spec.load(src, dtype=dtype, progress=progress, **load_kwargs)
    model_spec.export(model, dst, overwrite=overwrite)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return {"kind": kind, "src": src, "dst": dst, "to": to, "dtype": dtype,
          "parameters": int(n_params), "seconds": round(time.perf_counter() - start, 2)}

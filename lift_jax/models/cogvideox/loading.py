"""`load_transformer`: a diffusers folder or a converted checkpoint -> `CogVideoXTransformer3D`
(and its save / export / streaming conversion), all through the spec in `params.py`."""

from __future__ import annotations

from jax.sharding import Mesh

from lift_jax.checkpoint.spec import component_folder
from lift_jax.models.cogvideox.modeling import CogVideoXTransformer3D
from lift_jax.models.cogvideox.params import SPEC

KIND = SPEC.kind


def resolve_diffusers_folder(path: str, subfolder: str) -> str:
  """Accepts a component folder or a whole pipeline folder holding `subfolder/`."""
  return component_folder(path, subfolder)


def load_transformer(path: str, *, dtype: str = "float32", param_dtype: str | None = None,
                     mesh: Mesh | None = None, remat: str = "none", attention_impl: str = "auto",
                     progress: bool = False) -> CogVideoXTransformer3D:
  """Loads a CogVideoX transformer from a diffusers `transformer/` folder (or pipeline root) or a
  converted checkpoint. `dtype` is the compute dtype; parameters are stored in `param_dtype`
  (default: `dtype`). With a `mesh`, each parameter is placed directly onto its shards.
  """
  return SPEC.load(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh, remat=remat,
                   attention_impl=attention_impl, progress=progress)


# Converted checkpoint out, upstream layout out, upstream -> converted streaming, config only.
save_transformer = SPEC.save
export_diffusers = SPEC.export
convert_transformer = SPEC.convert
transformer_config = SPEC.config

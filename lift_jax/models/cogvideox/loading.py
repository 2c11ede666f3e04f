"""`load_transformer`: a diffusers folder or a converted checkpoint -> `CogVideoXTransformer3D`
(and its save / export / streaming conversion), all through the spec in `params.py`."""

from __future__ import annotations

from lift_jax.checkpoint.spec import component_folder
from lift_jax.models.cogvideox.params import SPEC

KIND = SPEC.kind


def resolve_diffusers_folder(path: str, subfolder: str) -> str:
  """Accepts a component folder or a whole pipeline folder holding `subfolder/`."""
  return component_folder(path, subfolder)


load_transformer = SPEC.load  # (path, *, dtype, param_dtype, mesh, remat, attention_impl, progress)
# Converted checkpoint out, upstream layout out, upstream -> converted streaming, config only.
save_transformer = SPEC.save
export_diffusers = SPEC.export
convert_transformer = SPEC.convert
transformer_config = SPEC.config

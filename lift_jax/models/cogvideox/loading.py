"""`load_transformer`: a diffusers folder or a converted checkpoint -> `CogVideoXTransformer3D`."""

from __future__ import annotations

import os

from flax import nnx
from jax.sharding import Mesh

from lift_jax.checkpoint import folders, store
from lift_jax.checkpoint.safetensors import WeightFolder
from lift_jax.checkpoint.tables import export_tensors, stream_from_table
from lift_jax.models.cogvideox.modeling import CogVideoXConfig, CogVideoXTransformer3D
from lift_jax.models.cogvideox.params import transformer_rules

KIND = "cogvideox-transformer"





def resolve_diffusers_folder(path: str, subfolder: str) -> str:
  """Accepts a component folder or a whole pipeline folder holding `subfolder/`."""
  nested = os.path.join(path, subfolder)
  if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(nested):
    return nested
  return path


def transformer_config(path: str, **runtime) -> CogVideoXConfig:
  """The model config of a diffusers folder or converted checkpoint, with runtime overrides."""
  return folders.model_config(
      path, kind=KIND, folder=lambda p: resolve_diffusers_folder(p, "transformer"),
      parse=lambda c: CogVideoXConfig.from_diffusers_config(c, **runtime),
      what="the transformer's config.json")


def load_transformer(path: str, *, dtype: str = "float32", param_dtype: str | None = None,
                     mesh: Mesh | None = None, remat: str = "none", attention_impl: str = "auto",
                     progress: bool = False) -> CogVideoXTransformer3D:
  """Loads a CogVideoX transformer from a diffusers `transformer/` folder or a converted checkpoint.

  `dtype` is the compute dtype; parameters are stored in `param_dtype` (default: `dtype`). With a
  `mesh`, each parameter is placed directly onto its shards.
  """
  cfg = transformer_config(path, dtype=dtype, param_dtype=param_dtype or dtype, remat=remat,
                           attention_impl=attention_impl)
  make = lambda: CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0))
  return folders.load_model(
      path, make, weights=lambda p: WeightFolder(resolve_diffusers_folder(p, "transformer")),
      rules=transformer_rules(cfg), mesh=mesh, progress=progress)


def convert_transformer(src: str, dst: str, *, dtype: str = "float32", mesh: Mesh | None = None,
                        overwrite: bool = False, progress: bool = False) -> int:
  """diffusers folder -> converted checkpoint, streaming: the model is never held whole.

  Each parameter goes from the safetensors shards onto its device shards and into the output in
  groups of ~512 MB. Returns the number of parameters.
  """
  cfg = transformer_config(src, dtype=dtype, param_dtype=dtype)
  abstract = nnx.state(nnx.eval_shape(lambda: CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0))))
  folder = WeightFolder(resolve_diffusers_folder(src, "transformer"))
  count = [0]

  def arrays():
    for path, array in stream_from_table(abstract, folder, transformer_rules(cfg), mesh=mesh,
                                         progress=progress):
      count[0] += array.size
      yield path, array

  store.save_streaming(dst, KIND, cfg.to_diffusers_config(), arrays(), overwrite=overwrite)
  return count[0]


def save_transformer(model: CogVideoXTransformer3D, dst: str, *, overwrite: bool = False) -> str:
  """Writes a converted checkpoint that `load_transformer` reads back."""
  return store.save_model(dst, KIND, model.config.to_diffusers_config(), model,
                          overwrite=overwrite)


def export_diffusers(model: CogVideoXTransformer3D, dst: str, *, max_shard_bytes: int = 5 * 1024**3,
                     overwrite: bool = False) -> str:
  """Writes a diffusers `transformer/` folder (config.json + safetensors shards + index).

  `CogVideoXTransformer3DModel.from_pretrained(dst)` loads it, so a fine-tuned model can be evaluated
  and published with the PyTorch tooling. Written under a temporary name, then renamed.
  """
  return folders.export_folder(dst, model.config.to_diffusers_config(),
                               export_tensors(model, transformer_rules(model.config)),
                               weights_name="diffusion_pytorch_model",
                               max_shard_bytes=max_shard_bytes, overwrite=overwrite)



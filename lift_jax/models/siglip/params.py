"""transformers `SiglipVisionModel` keys -> `SiglipVisionModel`, and `load` / `save` / `export`
(back to the transformers layout).

`load` reads a transformers folder (config.json + safetensors, sharded or not), VILA's
`vision_tower/` folder, or a converted checkpoint (kind "siglip-vision"). Keys are accepted with the
`vision_model.` prefix (transformers 4.x, VILA) and without it (transformers 5); a full `SiglipModel`
folder works too, its text tower, logit scale and the vision attention-pool head are skipped.
"""

from __future__ import annotations


from flax import nnx
from jax.sharding import Mesh

from lift_jax.checkpoint import folders, store
from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.checkpoint.tables import Rule, export_tensors, identity, linear
from lift_jax.models.siglip.modeling import SiglipVisionConfig, SiglipVisionModel

KIND = "siglip-vision"
PREFIX = "vision_model."
# Keys a tower folder may hold that the port does not use.
IGNORED = ("head.*", "text_model.*", "logit_scale", "logit_bias")


def vision_rules(cfg: SiglipVisionConfig) -> list[Rule]:
  """One row per (prefix-free) transformers key; `{i}` rows fill the stacked layers."""
  d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  to_heads = lambda w: w.T.reshape(d, n, h)  # [N·H, D] -> [D, N, H]
  to_heads_inv = lambda k: k.reshape(d, n * h).T
  from_heads = lambda w: w.T.reshape(n, h, d)  # [D, N·H] -> [N, H, D]
  from_heads_inv = lambda k: k.reshape(n * h, d).T
  head_bias = lambda b: b.reshape(n, h)
  flat = lambda b: b.reshape(-1)
  blk, dst = "encoder.layers.{i}", "blocks.layers"
  rules = [
      Rule("embeddings.patch_embedding.weight", "patch_embedding.kernel",
           lambda w: w.transpose(1, 2, 3, 0),  # Conv2d [D, C, p, p] -> [C, p, p, D]
           lambda k: k.transpose(3, 0, 1, 2)),
      Rule("embeddings.patch_embedding.bias", "patch_embedding.bias"),
      Rule("embeddings.position_embedding.weight", "position_embedding"),
      Rule("post_layernorm.weight", "post_layernorm.scale"),
      Rule("post_layernorm.bias", "post_layernorm.bias"),
  ]
  for norm in ("layer_norm1", "layer_norm2"):
    rules += [Rule(f"{blk}.{norm}.weight", f"{dst}.{norm}.scale"),
              Rule(f"{blk}.{norm}.bias", f"{dst}.{norm}.bias")]
  for src, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
    rules += [Rule(f"{blk}.self_attn.{src}.weight", f"{dst}.attn.{ours}.kernel", to_heads,
                   to_heads_inv),
              Rule(f"{blk}.self_attn.{src}.bias", f"{dst}.attn.{ours}.bias", head_bias, flat)]
  rules += [Rule(f"{blk}.self_attn.out_proj.weight", f"{dst}.attn.o.kernel", from_heads,
                 from_heads_inv),
            Rule(f"{blk}.self_attn.out_proj.bias", f"{dst}.attn.o.bias", identity)]
  for src, ours in (("fc1", "up"), ("fc2", "down")):
    rules += [Rule(f"{blk}.mlp.{src}.weight", f"{dst}.mlp.{ours}.kernel", linear),
              Rule(f"{blk}.mlp.{src}.bias", f"{dst}.mlp.{ours}.bias")]
  return rules


class StripPrefix:
  """A `WeightFolder` seen with one key prefix removed (transformers 4.x writes `vision_model.`)."""

  def __init__(self, folder, prefix: str):
    self.folder = folder.folder
    self._inner = folder
    self._prefix = prefix
    self._map = {}
    for key in folder.keys():
      short = key[len(prefix):] if key.startswith(prefix) else key
      if short in self._map:
        raise CheckpointError(f"{self.folder}: holds both {key!r} and {self._map[short]!r}")
      self._map[short] = key

  def keys(self) -> list[str]:
    return list(self._map)

  def __contains__(self, key: str) -> bool:
    return key in self._map

  def shape(self, key: str):
    return self._inner.shape(self._map[key])

  def read(self, key: str):
    return self._inner.read(self._map[key])


def resolve_folder(path: str) -> str:
  """Accepts the tower folder itself or a VILA root holding `vision_tower/`."""
  return folders.vila_part(path, "vision_tower", "SigLIP")


def vision_config(path: str, **runtime) -> SiglipVisionConfig:
  """The config of a transformers folder or converted checkpoint, with runtime overrides."""
  return folders.model_config(path, kind=KIND, folder=resolve_folder,
                              parse=lambda c: SiglipVisionConfig.from_hf_config(c, **runtime),
                              what="the SigLIP tower's config.json")


def weights(folder: str) -> StripPrefix:
  return StripPrefix(WeightFolder(folder), PREFIX)


def load(path: str, *, dtype: str = "float32", param_dtype: str | None = None,
         mesh: Mesh | None = None, remat: str = "none", attention_impl: str = "auto",
         progress: bool = False) -> SiglipVisionModel:
  """Loads a SigLIP vision tower from a transformers/VILA folder or a converted checkpoint.

  `dtype` is the compute dtype; parameters are stored in `param_dtype` (default: `dtype`). With a
  `mesh`, each parameter is placed directly onto its shards.
  """
  cfg = vision_config(path, dtype=dtype, param_dtype=param_dtype or dtype, remat=remat,
                      attention_impl=attention_impl)
  make = lambda: SiglipVisionModel(cfg, rngs=nnx.Rngs(0))
  return folders.load_model(path, make, weights=lambda p: weights(resolve_folder(p)),
                            rules=vision_rules(cfg), mesh=mesh, ignore=IGNORED, progress=progress)


def save(model: SiglipVisionModel, dst: str, *, overwrite: bool = False) -> str:
  """Writes a converted checkpoint that `load` reads back."""
  return store.save_model(dst, KIND, model.config.to_hf_config(), model, overwrite=overwrite)


def export(model: SiglipVisionModel, dst: str, *, prefix: str = PREFIX,
           max_shard_bytes: int = 5 * 1024**3, overwrite: bool = False) -> str:
  """Writes a transformers `SiglipVisionModel` folder (config.json + model safetensors), keys with
  the `vision_model.` prefix that VILA's `vision_tower/` (transformers 4.x) holds; transformers 5
  strips it on load. `prefix=""` writes the flat 5.x spelling. Atomic (temporary name, rename)."""
  tensors = ((prefix + key, value)
             for key, value in export_tensors(model, vision_rules(model.config)))
  return folders.export_folder(dst, model.config.to_hf_config(), tensors, weights_name="model",
                               max_shard_bytes=max_shard_bytes, overwrite=overwrite)



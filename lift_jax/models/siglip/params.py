"""transformers `SiglipVisionModel` keys -> `SiglipVisionModel`, and `load` / `save` / `export`
(back to the transformers layout).

`load` reads a transformers folder (config.json + safetensors, sharded or not), VILA's
`vision_tower/` folder, or a converted checkpoint (kind "siglip-vision"). Keys are accepted with the
`vision_model.` prefix (transformers 4.x, VILA) and without it (transformers 5); a full `SiglipModel`
folder works too, its text tower, logit scale and the vision attention-pool head are skipped.
"""

from __future__ import annotations

from lift_jax.checkpoint.safetensors import WeightFolder
from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule, head_bias, heads_in, heads_out, identity, linear
from lift_jax.checkpoint.views import StripPrefix
from lift_jax.models.siglip.modeling import SiglipVisionConfig, SiglipVisionModel
PREFIX = "vision_model."
# Keys a tower folder may hold that the port does not use.
IGNORED = ("head.*", "text_model.*", "logit_scale", "logit_bias")


def vision_rules(cfg: SiglipVisionConfig) -> list[Rule]:
  """One row per (prefix-free) transformers key; `{i}` rows fill the stacked layers."""
  d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  to_heads, to_heads_inv = heads_in(d, n, h)
  from_heads, from_heads_inv = heads_out(n, h, d)
  bias, flat = head_bias(n, h)
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
              Rule(f"{blk}.self_attn.{src}.bias", f"{dst}.attn.{ours}.bias", bias, flat)]
  rules += [Rule(f"{blk}.self_attn.out_proj.weight", f"{dst}.attn.o.kernel", from_heads,
                 from_heads_inv),
            Rule(f"{blk}.self_attn.out_proj.bias", f"{dst}.attn.o.bias", identity)]
  for src, ours in (("fc1", "up"), ("fc2", "down")):
    rules += [Rule(f"{blk}.mlp.{src}.weight", f"{dst}.mlp.{ours}.kernel", linear),
              Rule(f"{blk}.mlp.{src}.bias", f"{dst}.mlp.{ours}.bias")]
  return rules


def weights(folder: str) -> StripPrefix:
  return StripPrefix(WeightFolder(folder), PREFIX)


SPEC = ModelSpec(
    kind="siglip-vision", config_class=SiglipVisionConfig, model_class=SiglipVisionModel,
    rules=vision_rules, subfolder="vision_tower", name="the SigLIP tower",
    parse=SiglipVisionConfig.from_hf_config, dump=SiglipVisionConfig.to_hf_config,
    ignore=IGNORED, tensors=weights, vila_root=True)
KIND = SPEC.kind

load = SPEC.load  # (path, *, dtype, param_dtype, mesh, remat, attention_impl, progress)
def export(model: SiglipVisionModel, dst: str, *, prefix: str = PREFIX, **kwargs) -> str:
  """Writes a transformers `SiglipVisionModel` folder (config.json + model safetensors), keys with
  the `vision_model.` prefix that VILA's `vision_tower/` (transformers 4.x) holds; transformers 5
  strips it on load. `prefix=""` writes the flat 5.x spelling. Atomic (temporary name, rename)."""
  return SPEC.export(model, dst, prefix=prefix, **kwargs)


save = SPEC.save  # a converted checkpoint that `load` reads back
vision_config = SPEC.config

"""transformers `T5EncoderModel` keys -> `T5Encoder`, and `load_encoder` / `save_encoder` /
`export_encoder`.

`load_encoder` reads a transformers folder (config.json + model.safetensors, or shards listed in
model.safetensors.index.json), a pipeline root holding `text_encoder/`, or a converted checkpoint
(kind "t5-encoder"). A full `T5ForConditionalGeneration` folder works too: its decoder and LM head
are skipped, as `T5EncoderModel.from_pretrained` skips them. `export_encoder` writes the
transformers layout back (`T5EncoderModel.from_pretrained` reads it).
"""

from __future__ import annotations

from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule, heads_in, heads_out, identity, linear
from lift_jax.models.t5.modeling import T5Config, T5Encoder
SUBFOLDER = "text_encoder"
SHARED = "shared.weight"
TIED = "encoder.embed_tokens.weight"  # the same tensor as `shared.weight` (tied in transformers)
# Keys of a full encoder-decoder checkpoint that the encoder does not use.
IGNORED = ("decoder.*", "lm_head.weight")


def encoder_rules(cfg: T5Config) -> list[Rule]:
  """One row per transformers key; `{i}` rows fill the stacked block parameters layer by layer."""
  d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
  to_heads, to_heads_inv = heads_in(d, n, h)
  from_heads, from_heads_inv = heads_out(n, h, d)
  blk, dst = "encoder.block.{i}.layer", "blocks.layers"
  rules = [
      Rule(SHARED, "shared", identity),
      Rule("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           "relative_attention_bias", identity),
      Rule("encoder.final_layer_norm.weight", "final_norm.scale", identity),
      Rule(f"{blk}.0.SelfAttention.q.weight", f"{dst}.attn.q.kernel", to_heads,
           to_heads_inv),
      Rule(f"{blk}.0.SelfAttention.k.weight", f"{dst}.attn.k.kernel", to_heads,
           to_heads_inv),
      Rule(f"{blk}.0.SelfAttention.v.weight", f"{dst}.attn.v.kernel", to_heads,
           to_heads_inv),
      Rule(f"{blk}.0.SelfAttention.o.weight", f"{dst}.attn.o.kernel", from_heads,
           from_heads_inv),
      Rule(f"{blk}.0.layer_norm.weight", f"{dst}.attn_norm.scale", identity),
      Rule(f"{blk}.1.layer_norm.weight", f"{dst}.ffn_norm.scale", identity),
      Rule(f"{blk}.1.DenseReluDense.wo.weight", f"{dst}.ffn.down.kernel", linear),
  ]
  if cfg.is_gated:
    rules += [Rule(f"{blk}.1.DenseReluDense.wi_0.weight", f"{dst}.ffn.gate.kernel", linear),
              Rule(f"{blk}.1.DenseReluDense.wi_1.weight", f"{dst}.ffn.up.kernel", linear)]
  else:
    rules += [Rule(f"{blk}.1.DenseReluDense.wi.weight", f"{dst}.ffn.up.kernel", linear)]
  return rules


class TiedWeights:
  """A `WeightFolder` seen through T5's embedding tie.

  `save_pretrained` may write `shared.weight`, `encoder.embed_tokens.weight` or both (a raw
  state_dict has both); the table reads one table under the name `shared.weight`.
  """

  def __init__(self, folder: WeightFolder):
    self.folder = folder.folder
    self._inner = folder
    self._alias: dict[str, str] = {}
    keys = list(folder.keys())
    if SHARED in folder and TIED in folder:
      if tuple(folder.shape(SHARED)) != tuple(folder.shape(TIED)):
        raise CheckpointError(f"{self.folder}: tied embeddings disagree: {SHARED} "
                              f"{tuple(folder.shape(SHARED))} vs {TIED} {tuple(folder.shape(TIED))}")
      keys.remove(TIED)
    elif TIED in folder:
      self._alias[SHARED] = TIED
      keys = [SHARED if k == TIED else k for k in keys]
    self._keys = keys

  def keys(self) -> list[str]:
    return list(self._keys)

  def __contains__(self, key: str) -> bool:
    return key in self._alias or (key in self._inner and key != TIED)

  def shape(self, key: str):
    return self._inner.shape(self._alias.get(key, key))

  def read(self, key: str):
    return self._inner.read(self._alias.get(key, key))


SPEC = ModelSpec(
    kind="t5-encoder", config_class=T5Config, model_class=T5Encoder, rules=encoder_rules,
    subfolder=SUBFOLDER, name="the T5 encoder", parse=T5Config.from_hf_config,
    dump=T5Config.to_hf_config, ignore=IGNORED, tensors=lambda f: TiedWeights(WeightFolder(f)))
KIND = SPEC.kind

load_encoder = SPEC.load  # (path, *, dtype, param_dtype, mesh, remat, attention_impl, progress)
# Converted checkpoint out; transformers `T5EncoderModel` folder out (the tied embedding stored
# once, as `shared.weight`); config only.
save_encoder = SPEC.save
export_encoder = SPEC.export
encoder_config = SPEC.config

"""transformers `LlamaForCausalLM` keys -> `LlamaForCausalLM`, and `load` / `save` / `export`
(back to the transformers layout).

`load` reads a transformers folder (config.json + safetensors, sharded or not), VILA's `llm/` folder
(or a VILA root holding it), or a converted checkpoint (kind "llama"). With tied embeddings a stored
`lm_head.weight` is skipped; old checkpoints' `rotary_emb.inv_freq` buffers are skipped too.
"""

from __future__ import annotations

from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule, head_bias, heads_in, heads_out, identity, linear
from lift_jax.models.llama.modeling import LlamaConfig, LlamaForCausalLM
SUBFOLDER = "llm"
IGNORED = ("model.layers.*.self_attn.rotary_emb.inv_freq",)


def llama_rules(cfg: LlamaConfig) -> list[Rule]:
  """One row per transformers key; `{i}` rows fill the stacked layer parameters."""
  d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  q_heads = heads_in(d, n, h)
  kv_heads = heads_in(d, k, h)  # grouped-query: K key/value heads
  from_heads = heads_out(n, h, d)
  blk, dst = "model.layers.{i}", "layers.layers"
  rules = [
      Rule("model.embed_tokens.weight", "embed_tokens", identity),
      Rule("model.norm.weight", "norm.scale", identity),
      Rule(f"{blk}.input_layernorm.weight", f"{dst}.input_layernorm.scale", identity),
      Rule(f"{blk}.post_attention_layernorm.weight", f"{dst}.post_attention_layernorm.scale",
           identity),
      Rule(f"{blk}.self_attn.q_proj.weight", f"{dst}.attn.q.kernel", *q_heads),
      Rule(f"{blk}.self_attn.k_proj.weight", f"{dst}.attn.k.kernel", *kv_heads),
      Rule(f"{blk}.self_attn.v_proj.weight", f"{dst}.attn.v.kernel", *kv_heads),
      Rule(f"{blk}.self_attn.o_proj.weight", f"{dst}.attn.o.kernel", *from_heads),
      Rule(f"{blk}.mlp.gate_proj.weight", f"{dst}.mlp.gate.kernel", linear),
      Rule(f"{blk}.mlp.up_proj.weight", f"{dst}.mlp.up.kernel", linear),
      Rule(f"{blk}.mlp.down_proj.weight", f"{dst}.mlp.down.kernel", linear),
  ]
  if cfg.attention_bias:
    rules += [Rule(f"{blk}.self_attn.q_proj.bias", f"{dst}.attn.q.bias", *head_bias(n, h)),
              Rule(f"{blk}.self_attn.k_proj.bias", f"{dst}.attn.k.bias", *head_bias(k, h)),
              Rule(f"{blk}.self_attn.v_proj.bias", f"{dst}.attn.v.bias", *head_bias(k, h)),
              Rule(f"{blk}.self_attn.o_proj.bias", f"{dst}.attn.o.bias", identity)]
  if cfg.mlp_bias:
    rules += [Rule(f"{blk}.mlp.{p}_proj.bias", f"{dst}.mlp.{p}.bias", identity)
              for p in ("gate", "up", "down")]
  if not cfg.tie_word_embeddings:
    rules.append(Rule("lm_head.weight", "lm_head.kernel", linear))
  return rules


def ignored_keys(cfg: LlamaConfig) -> tuple[str, ...]:
  return IGNORED + (("lm_head.weight",) if cfg.tie_word_embeddings else ())


SPEC = ModelSpec(
    kind="llama", config_class=LlamaConfig, model_class=LlamaForCausalLM, rules=llama_rules,
    subfolder=SUBFOLDER, name="the Llama model", parse=LlamaConfig.from_hf_config,
    dump=LlamaConfig.to_hf_config, ignore=ignored_keys, vila_root=True)
KIND = SPEC.kind

load = SPEC.load  # (path, *, dtype, param_dtype, mesh, remat, attention_impl, progress)
# Converted checkpoint out; transformers `LlamaForCausalLM` folder out (VILA's `llm/` layout);
# config only.
save = SPEC.save
export = SPEC.export
llama_config = SPEC.config

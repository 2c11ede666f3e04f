"""Llama-family causal LM (Llama-2 / Vicuna MHA, Yi GQA) with a KV cache and jitted generation."""

from lift_jax.models.llama.generate import (GenerateOutput, decode_texts, filter_logits, generate,
                                            stop_sequences)
from lift_jax.models.llama.modeling import KVCache, LlamaConfig, LlamaForCausalLM, rope_cos_sin
from lift_jax.models.llama.params import KIND, llama_config, llama_rules, load, save

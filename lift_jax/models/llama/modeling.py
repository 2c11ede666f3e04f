"""Llama-family decoder (Llama-2, Vicuna, Yi) in Flax NNX, with an explicit KV cache.

`LlamaForCausalLM(cfg)(input_ids [B,T], attention_mask, position_ids) -> logits [B,T,V]` is
transformers' `LlamaForCausalLM(...).logits`: token embeddings (or `inputs_embeds`, so image features
can be spliced in), pre-norm blocks (RMSNorm, causal attention with rotate-half RoPE and grouped
query heads when `num_key_value_heads < num_attention_heads`, SwiGLU MLP), a final RMSNorm and an
untied or tied LM head.

`step(inputs_embeds, attention_mask, position_ids, cache) -> (logits, cache)` runs tokens against a
`KVCache` (`[L,B,S,K,H]` keys and values, a `[B,S]` mask of real slots and the next write index):
prefill writes the whole prompt, decoding one token per call. `generate.py` drives it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax import layers
from lift_jax.parallel.mesh import constrain

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "relu": "relu"}
_REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads")
_SUPPORTED_MODEL_TYPES = ("llama", "yi", "mistral")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")
_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
_CACHE = (None, "activation_batch", None, "activation_heads", "activation_kv")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(layers.RuntimeSettings):
  """Architecture (transformers `LlamaConfig` field names) plus runtime settings."""

  vocab_size: int = 32000
  hidden_size: int = 5120
  intermediate_size: int = 13824
  num_hidden_layers: int = 40
  num_attention_heads: int = 40
  num_key_value_heads: int = 40
  head_dim: int = 128
  hidden_act: str = "silu"
  max_position_embeddings: int = 4096
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  pad_token_id: int | None = 0

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    eos = self.eos_token_id
    return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

  @classmethod
  def vicuna_13b(cls, **kw) -> "LlamaConfig":
    """lmsys/vicuna-13b-v1.5 (Llama-2-13B shape), the LLM of VILA1.5-13b."""
    return cls(**kw)

  @classmethod
  def yi_34b(cls, **kw) -> "LlamaConfig":
    """NousResearch/Nous-Hermes-2-Yi-34B (GQA, 8 KV heads), the LLM of VILA1.5-40b."""
    return cls(**{**dict(vocab_size=64000, hidden_size=7168, intermediate_size=20480,
                         num_hidden_layers=60, num_attention_heads=56, num_key_value_heads=8,
                         rope_theta=5e6, bos_token_id=1, eos_token_id=7, pad_token_id=0), **kw})

  @classmethod
  def from_hf_config(cls, config: dict[str, Any], **runtime) -> "LlamaConfig":
    """From a transformers `config.json` dict (4.x `rope_theta` or 5.x `rope_parameters`).

    Missing optional fields take transformers' `LlamaConfig` defaults.
    """
    kwargs = layers.config_fields(
        config, what="Llama", required=_REQUIRED_HF_KEYS,
        defaults=dict(hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                      bos_token_id=1, pad_token_id=None))
    model_type = config.get("model_type", "llama")
    if model_type not in _SUPPORTED_MODEL_TYPES:
      raise ValueError(f"model_type={model_type!r} is not supported (expected one of "
                       f"{_SUPPORTED_MODEL_TYPES})")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
      raise ValueError(f"rope type {rope_type!r} is not supported (only the default RoPE)")
    if config.get("pretraining_tp", 1) not in (1, None):
      warnings.warn("pretraining_tp > 1 is ignored (it only changes how torch splits matmuls)")
    if config.get("sliding_window") and model_type == "mistral":
      raise ValueError("sliding-window attention is not supported")
    n = config["num_attention_heads"]
    eos = config.get("eos_token_id", 2)
    kwargs.update(
        num_key_value_heads=config.get("num_key_value_heads") or n,
        head_dim=config.get("head_dim") or config["hidden_size"] // n,
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos)
    cfg = cls(**kwargs, **runtime)
    cfg.validate()
    return cfg

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json that both `from_hf_config` and transformers' `LlamaConfig` read back."""
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    out.update(self.architecture())
    out.pop("rope_theta")
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if isinstance(self.eos_token_id, tuple):
      out["eos_token_id"] = list(self.eos_token_id)
    return out

  def validate(self) -> None:
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (known: "
                       f"{sorted(_ACTIVATIONS)})")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim}: RoPE needs an even head dim")
    self.validate_runtime()


# ----------------------------------------------------------------------------- RoPE and cache


def rope_cos_sin(position_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos/sin `[B,T,H]` in fp32 for integer positions `[B,T]`, both halves repeated (rotate-half).

  The inverse frequencies are computed on the host in float32, as transformers does in torch.
  """
  inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32)
                                            / np.float32(head_dim)))).astype(np.float32)
  freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


class KVCache(NamedTuple):
  """Keys/values of every layer for `S` slots; `valid[b, s]` says slot s holds a real token."""

  k: jax.Array  # [L, B, S, K, H]
  v: jax.Array  # [L, B, S, K, H]
  valid: jax.Array  # [B, S] bool
  index: jax.Array  # int32 scalar: the next slot to write

  @property
  def max_length(self) -> int:
    return self.k.shape[2]



def _rms_norm(cfg: LlamaConfig) -> layers.RMSNorm:
  return layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, cast_before_scale=True,
                        **cfg.dtypes)


# ----------------------------------------------------------------------------- modules


class Attention(nnx.Module):
  """Causal self-attention, `N` query heads sharing `K` key/value heads, RoPE on q and k."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kw = dict(use_bias=cfg.attention_bias, rngs=rngs, **cfg.dtypes)
    self.q = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.k = layers.Dense(d, (k, h), axes=("embed", "kv_heads", "kv"), **kw)
    self.v = layers.Dense(d, (k, h), axes=("embed", "kv_heads", "kv"), **kw)
    self.o = layers.Dense((n, h), d, axes=("heads", "kv", "embed"), **kw)
    self.impl = cfg.attention_impl

  def __call__(self, x_BTD, cos_BTH, sin_BTH, mask_B1TS, kv=None, index=None):
    """Returns the output and this call's new keys/values `[B,T,K,H]` (for the cache)."""
    q_BTNH = layers.apply_rope_half(self.q(x_BTD), cos_BTH, sin_BTH)
    k_BTKH = layers.apply_rope_half(self.k(x_BTD), cos_BTH, sin_BTH)
    v_BTKH = self.v(x_BTD)
    q_BTNH = constrain(q_BTNH, _HEADS)
    k_new, v_new = constrain(k_BTKH, _HEADS), constrain(v_BTKH, _HEADS)
    if kv is not None:  # attend to the whole cache, this call's tokens written in
      k_BSKH = jax.lax.dynamic_update_slice(kv[0], k_new.astype(kv[0].dtype), (0, index, 0, 0))
      v_BSKH = jax.lax.dynamic_update_slice(kv[1], v_new.astype(kv[1].dtype), (0, index, 0, 0))
      k_BSKH, v_BSKH = k_BSKH.astype(q_BTNH.dtype), v_BSKH.astype(q_BTNH.dtype)
    else:
      k_BSKH, v_BSKH = k_new, v_new
    o_BTNH = layers.attention(q_BTNH, k_BSKH, v_BSKH, impl=self.impl, mask=mask_B1TS)
    return self.o(o_BTNH), (k_new, v_new)


class DecoderLayer(nnx.Module):
  """x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = _rms_norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = _rms_norm(cfg)
    self.mlp = layers.Mlp(cfg.hidden_size, cfg.intermediate_size, act=_ACTIVATIONS[cfg.hidden_act],
                          gated=True, use_bias=cfg.mlp_bias, rngs=rngs, **cfg.dtypes)

  def __call__(self, x_BTD, cos_BTH, sin_BTH, mask_B1TS, kv=None, index=None):
    x_BTD = constrain(x_BTD, _TOKENS)
    with jax.named_scope("attention"):
      o_BTD, new_kv = self.attn(self.input_layernorm(x_BTD), cos_BTH, sin_BTH, mask_B1TS, kv, index)
      x_BTD = x_BTD + o_BTD
    with jax.named_scope("mlp"):
      x_BTD = x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))
    return x_BTD, new_kv


class LlamaForCausalLM(nnx.Module):
  """`lm(input_ids [B,T]) -> logits [B,T,V]`; `lm.step(embeds, mask, positions, cache)` decodes."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    dt = cfg.dtypes
    self.embed_tokens = layers.param(
        0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size),
                                 dt["param_dtype"]), ("vocab", "embed"))
    self.layers = layers.StackedBlocks(lambda r: DecoderLayer(cfg, rngs=r), cfg.num_hidden_layers,
                                       remat=cfg.remat, rngs=rngs)
    self.norm = _rms_norm(cfg)
    self.lm_head = (None if cfg.tie_word_embeddings else
                    layers.Dense(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                                 use_bias=False, rngs=rngs, **dt))

  # -- pieces

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings `[B,T] -> [B,T,D]` in the compute dtype."""
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")
    x = jnp.take(self.embed_tokens[...], input_ids, axis=0)
    return constrain(x.astype(jnp.dtype(self.config.dtype)), _TOKENS)

  def head(self, h_BTD: jax.Array) -> jax.Array:
    """Final norm output -> logits (float32)."""
    with jax.named_scope("lm_head"):
      if self.lm_head is None:
        dtype = jnp.dtype(self.config.dtype)
        logits = jnp.einsum("BTD,VD->BTV", h_BTD.astype(dtype),
                            self.embed_tokens[...].astype(dtype))
      else:
        logits = self.lm_head(h_BTD)
      return constrain(logits.astype(jnp.float32),
                       ("activation_batch", "activation_length", "activation_vocab"))

  def _inputs(self, input_ids, inputs_embeds):
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
      if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
      return self.embed(input_ids)
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
      raise ValueError(f"inputs_embeds must be [B, T, {self.config.hidden_size}], got "
                       f"{tuple(inputs_embeds.shape)}")
    return constrain(inputs_embeds.astype(jnp.dtype(self.config.dtype)), _TOKENS)

  def _layers(self, x_BTD, cos, sin, mask, cache: KVCache | None = None):
    """Runs the stacked layers; with a cache, writes each layer's new keys/values in place."""
    if cache is None:
      run = lambda block, x, _, i: (block(x, cos, sin, mask)[0], None)
      return self.layers.scan(run, x_BTD)[0], None
    index = cache.index

    def body(block, carry, _, i):
      x, ck, cv = carry
      kv = (jax.lax.dynamic_index_in_dim(ck, i, keepdims=False),
            jax.lax.dynamic_index_in_dim(cv, i, keepdims=False))
      x, (k_new, v_new) = block(x, cos, sin, mask, kv, index)
      ck = jax.lax.dynamic_update_slice(ck, k_new[None].astype(ck.dtype), (i, 0, index, 0, 0))
      cv = jax.lax.dynamic_update_slice(cv, v_new[None].astype(cv.dtype), (i, 0, index, 0, 0))
      return (x, constrain(ck, _CACHE), constrain(cv, _CACHE)), None

    (x_BTD, ck, cv), _ = self.layers.scan(body, (x_BTD, cache.k, cache.v))
    return x_BTD, (ck, cv)

  # -- public calls

  def hidden_states(self, input_ids=None, attention_mask=None, position_ids=None, *,
                    inputs_embeds=None) -> jax.Array:
    """The final-norm hidden states `[B,T,D]` (what the LM head reads)."""
    x_BTD = self._inputs(input_ids, inputs_embeds)
    b, t = x_BTD.shape[:2]
    if position_ids is None:  # as transformers: 0..T-1 whatever the padding
      position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
    causal_TS = jnp.tril(jnp.ones((t, t), bool))
    mask = causal_TS[None, None]
    if attention_mask is not None:
      if attention_mask.shape != (b, t):
        raise ValueError(f"attention_mask must be [B, T] = {(b, t)}, got {tuple(attention_mask.shape)}")
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    x_BTD, _ = self._layers(x_BTD, cos, sin, mask)
    return self.norm(x_BTD)

  def __call__(self, input_ids=None, attention_mask=None, position_ids=None, *,
               inputs_embeds=None) -> jax.Array:
    """Logits `[B,T,V]` in float32, like `LlamaForCausalLM(...).logits`."""
    return self.head(self.hidden_states(input_ids, attention_mask, position_ids,
                                        inputs_embeds=inputs_embeds))

  def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_length` tokens (prompt included)."""
    cfg = self.config
    shape = (cfg.num_hidden_layers, batch, max_length, cfg.num_key_value_heads, cfg.head_dim)
    dtype = jnp.dtype(dtype or cfg.dtype)
    return KVCache(k=constrain(jnp.zeros(shape, dtype), _CACHE),
                   v=constrain(jnp.zeros(shape, dtype), _CACHE),
                   valid=jnp.zeros((batch, max_length), bool), index=jnp.zeros((), jnp.int32))

  def step(self, inputs_embeds: jax.Array, attention_mask: jax.Array, position_ids: jax.Array,
           cache: KVCache, *, last_only: bool = False) -> tuple[jax.Array, KVCache]:
    """Runs `T` new tokens at cache slots `index..index+T-1`; returns logits and the new cache.

    `attention_mask [B,T]` marks the new tokens that are real (False for left padding);
    `position_ids [B,T]` are their RoPE positions. With `last_only`, logits `[B,1,V]` of the last
    token only (prefill of a long prompt).
    """
    x_BTD = self._inputs(None, inputs_embeds)
    b, t = x_BTD.shape[:2]
    slots_S = jnp.arange(cache.max_length, dtype=jnp.int32)
    valid_BS = jax.lax.dynamic_update_slice(cache.valid, attention_mask.astype(bool),
                                            (0, cache.index))
    query_slot_T = cache.index + jnp.arange(t, dtype=jnp.int32)
    causal_TS = slots_S[None, :] <= query_slot_T[:, None]
    mask = causal_TS[None, None] & valid_BS[:, None, None, :]
    cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
    x_BTD, (ck, cv) = self._layers(x_BTD, cos, sin, mask, cache)
    if last_only:
      x_BTD = x_BTD[:, -1:]
    logits = self.head(self.norm(x_BTD))
    return logits, KVCache(k=ck, v=cv, valid=valid_BS, index=cache.index + t)

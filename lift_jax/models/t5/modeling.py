"""T5 encoder (v1.1 and the original T5), the CogVideoX text encoder, in Flax NNX.

`T5Encoder(cfg)(input_ids [B,T], attention_mask=None) -> [B,T,D]` is transformers'
`T5EncoderModel(...).last_hidden_state`: unscaled token embeddings, pre-norm blocks (RMS-style
T5LayerNorm, self-attention without 1/sqrt(d) scaling plus a bucketed relative-position bias that
layer 0 owns and every layer shares, gated-GELU feed-forward), then a final norm.
T5 v1.1 overflows in fp16: run it in float32 or bfloat16.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax import layers
from lift_jax.parallel.mesh import constrain

# transformers' `dense_act_fn` names -> lift_jax.layers activation names.
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                "relu": "relu", "silu": "silu"}
# Architecture fields a transformers config.json must state (its defaults are t5-small's).
_REQUIRED_HF_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
_SUPPORTED_MODEL_TYPES = ("t5", "mt5")


def _act_info(feed_forward_proj: str) -> tuple[str, bool]:
  """(transformers activation name, gated), exactly as `T5Config.__post_init__` derives them."""
  parts = feed_forward_proj.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"feed_forward_proj={feed_forward_proj!r}: expected 'ACT' or 'gated-ACT'")
  act = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
  if act not in _ACTIVATIONS:
    raise ValueError(f"feed_forward_proj={feed_forward_proj!r}: activation {act!r} is not supported "
                     f"(known: {sorted(_ACTIVATIONS)})")
  return act, parts[0] == "gated"


@dataclasses.dataclass(frozen=True)
class T5Config(layers.RuntimeSettings):
  """Architecture (transformers `T5Config` field names) plus runtime settings."""

  vocab_size: int = 32128
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @property
  def is_gated(self) -> bool:
    return _act_info(self.feed_forward_proj)[1]

  @property
  def activation(self) -> str:
    return _ACTIVATIONS[_act_info(self.feed_forward_proj)[0]]

  @classmethod
  def t5_v1_1_xxl(cls, **kw) -> "T5Config":
    """google/t5-v1_1-xxl, the encoder of every CogVideoX pipeline (~4.76 B parameters)."""
    return cls(**kw)

  @classmethod
  def from_hf_config(cls, config: dict[str, Any], **runtime) -> "T5Config":
    """From a transformers `config.json` dict; only architecture fields are read.

    Missing optional fields take transformers' defaults (so a config without `feed_forward_proj`
    is the original T5's ReLU feed-forward, as transformers reads it).
    """
    kwargs = layers.config_fields(
        config, what="T5", required=_REQUIRED_HF_KEYS,
        defaults=dict(relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      layer_norm_epsilon=1e-6, feed_forward_proj="relu"))
    model_type = config.get("model_type", "t5")
    if model_type not in _SUPPORTED_MODEL_TYPES:
      raise ValueError(f"model_type={model_type!r} is not supported (expected one of "
                       f"{_SUPPORTED_MODEL_TYPES}; umt5 has a position bias in every layer)")
    if config.get("is_decoder", False):
      raise ValueError("is_decoder=True: this is a T5 decoder config; the port has the encoder only")
    cfg = cls(**kwargs, **runtime)
    cfg.validate()
    return cfg

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json that both `from_hf_config` and transformers' `T5Config` read back."""
    act, gated = _act_info(self.feed_forward_proj)
    out = {"architectures": ["T5EncoderModel"], "model_type": "t5", "is_encoder_decoder": False}
    out.update(self.architecture())
    out.update(dense_act_fn=act, is_gated_act=gated)
    return out

  def validate(self) -> None:
    _act_info(self.feed_forward_proj)
    if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
      raise ValueError(f"relative_attention_num_buckets={self.relative_attention_num_buckets}: "
                       "the bidirectional bucketing needs an even number >= 4")
    if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 4:
      raise ValueError(f"relative_attention_max_distance={self.relative_attention_max_distance} must "
                       f"exceed num_buckets/4={self.relative_attention_num_buckets // 4}")
    self.validate_runtime()


# ----------------------------------------------------------------------------- position bias


def relative_position_buckets(query_len: int, key_len: int, *, num_buckets: int = 32,
                              max_distance: int = 128) -> np.ndarray:
  """Bidirectional T5 bucket of `key - query` for every pair, int32 `[T, S]`.

  Half the buckets per direction; distances below num_buckets/4 get their own bucket, larger ones
  share log-spaced buckets up to max_distance. Computed on the host in float32 like transformers'
  `_relative_position_bucket`, so the log-bucket edges (e.g. distance 16 -> bucket 10) agree.
  """
  rel = np.arange(key_len, dtype=np.int64)[None, :] - np.arange(query_len, dtype=np.int64)[:, None]
  half = num_buckets // 2
  max_exact = half // 2
  direction = (rel > 0).astype(np.int64) * half
  n = np.abs(rel)
  with np.errstate(divide="ignore"):
    large = (np.log(n.astype(np.float32) / np.float32(max_exact))
             / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = max_exact + np.where(n < max_exact, 0, large).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (direction + np.where(n < max_exact, n, large)).astype(np.int32)


# ----------------------------------------------------------------------------- modules



def _norm(cfg: T5Config) -> layers.RMSNorm:
  # T5LayerNorm: fp32 statistics, cast, then scaled (cast_before_scale). transformers casts to the
  # weight dtype; this casts to the compute dtype, the same thing when dtype == param_dtype.
  return layers.RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, cast_before_scale=True,
                        **cfg.dtypes)


class SelfAttention(nnx.Module):
  """Bias-free q/k/v/o projections; logits q·kᵀ (no 1/sqrt(d)) plus the shared position bias.

  The bias enters in the compute dtype, as transformers keeps it in the weight dtype; the
  dispatcher computes logits and softmax in fp32.
  """

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
    kw = dict(use_bias=False, rngs=rngs, **cfg.dtypes)
    self.q = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.k = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.v = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.o = layers.Dense((n, h), d, axes=("heads", "kv", "embed"), **kw)
    self.impl = cfg.attention_impl

  def __call__(self, h_BTD, bias_1NTS, mask_B11S):
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q, k, v = (constrain(proj(h_BTD), heads) for proj in (self.q, self.k, self.v))
    o_BTNH = layers.attention(q, k, v, impl=self.impl, mask=mask_B11S,
                              bias=bias_1NTS.astype(q.dtype), scale=1.0)
    return self.o(o_BTNH)


class T5Block(nnx.Module):
  """x + attn(norm(x)), then x + ffn(norm(x)); T5's `layer.0` and `layer.1`."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.attn_norm = _norm(cfg)
    self.attn = SelfAttention(cfg, rngs=rngs)
    self.ffn_norm = _norm(cfg)
    self.ffn = layers.Mlp(cfg.d_model, cfg.d_ff, act=cfg.activation, gated=cfg.is_gated,
                          use_bias=False, rngs=rngs, **cfg.dtypes)

  def __call__(self, x_BTD, bias_1NTS, mask_B11S):
    x_BTD = constrain(x_BTD, ("activation_batch", "activation_length", "activation_embed"))
    with jax.named_scope("attention"):
      x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), bias_1NTS, mask_B11S)
    with jax.named_scope("feed_forward"):
      x_BTD = x_BTD + self.ffn(self.ffn_norm(x_BTD))
    return x_BTD


class T5Encoder(nnx.Module):
  """`encoder(input_ids [B,T], attention_mask [B,T] | None) -> last_hidden_state [B,T,D]`."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    dt = cfg.dtypes
    # transformers initialises both tables with N(0, 1) (initializer_factor 1).
    self.shared = layers.param(
        jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), dt["param_dtype"]),
        ("vocab", "embed"))
    self.relative_attention_bias = layers.param(
        jax.random.normal(rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads),
                          dt["param_dtype"]), (None, "heads"))
    self.blocks = layers.StackedBlocks(lambda r: T5Block(cfg, rngs=r), cfg.num_layers,
                                       remat=cfg.remat, rngs=rngs)
    self.final_norm = _norm(cfg)

  def position_bias(self, query_len: int, key_len: int) -> jax.Array:
    """The shared relative-position bias `[1, N, T, S]` in fp32 (layer 0's table, all layers)."""
    cfg = self.config
    buckets_TS = relative_position_buckets(query_len, key_len,
                                           num_buckets=cfg.relative_attention_num_buckets,
                                           max_distance=cfg.relative_attention_max_distance)
    bias_TSN = jnp.take(self.relative_attention_bias[...].astype(jnp.float32), buckets_TS, axis=0)
    bias_1NTS = jnp.transpose(bias_TSN, (2, 0, 1))[None]
    return constrain(bias_1NTS, (None, "activation_heads", "activation_length", None))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"input_ids must be integer [B, T], got {input_ids.dtype} {input_ids.shape}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {attention_mask.shape} must equal input_ids shape "
                       f"{input_ids.shape}")
    t = input_ids.shape[1]
    with jax.named_scope("embed"):
      x_BTD = jnp.take(self.shared[...], input_ids, axis=0).astype(jnp.dtype(cfg.dtype))
      bias_1NTS = self.position_bias(t, t)
      # Keys only, as transformers' bidirectional mask: padded queries still attend to real keys.
      mask_B11S = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
    x_BTD = self.blocks(x_BTD, bias_1NTS, mask_B11S)
    with jax.named_scope("final_norm"):
      return self.final_norm(x_BTD)

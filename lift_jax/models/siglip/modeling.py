"""SigLIP vision tower (the 13B LiFT-Critic's image encoder) in Flax NNX.

`SiglipVisionModel(cfg)(pixel_values [B,3,H,W]) -> [B,P,D]` is transformers'
`SiglipVisionModel(...).last_hidden_state`: a 14x14 patch projection plus learned positions (no CLS
token), pre-norm encoder layers (LayerNorm, bidirectional attention with biases, GELU-tanh MLP), then
`post_layernorm`. `features(pixel_values, layer=-2)` is `hidden_states[layer]`, the un-normalized
output VILA feeds its projector; it runs only the layers it needs. The attention-pooling head is not
ported: no critic uses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax import layers
from lift_jax.parallel.mesh import constrain

# transformers `hidden_act` names -> lift_jax.layers activation names.
_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu",
                "quick_gelu": None, "relu": "relu", "silu": "silu"}
_REQUIRED_HF_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")
_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(layers.PatchGeometry, layers.RuntimeSettings):
  """Architecture (transformers `SiglipVisionConfig` field names) plus runtime settings."""

  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_hidden_layers: int = 27
  num_attention_heads: int = 16
  num_channels: int = 3
  image_size: int = 384
  patch_size: int = 14
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6

  @property
  def activation(self) -> str:
    return _ACTIVATIONS[self.hidden_act]

  @classmethod
  def so400m_patch14_384(cls, **kw) -> "SiglipVisionConfig":
    """google/siglip-so400m-patch14-384, the tower of VILA1.5-3b/13b (27 layers, 729 tokens)."""
    return cls(**kw)

  @classmethod
  def from_hf_config(cls, config: dict[str, Any], **runtime) -> "SiglipVisionConfig":
    """From a `SiglipVisionConfig` dict, or a full `SiglipConfig` dict (its `vision_config`)."""
    if "vision_config" in config and isinstance(config["vision_config"], dict):
      config = config["vision_config"]
    kwargs = layers.config_fields(
        config, what="SigLIP vision", required=_REQUIRED_HF_KEYS,
        defaults=dict(num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6))
    kwargs.update(image_size=layers.square(config, "image_size", 224),
                  patch_size=layers.square(config, "patch_size", 16))
    cfg = cls(**kwargs, **runtime)
    cfg.validate()
    return cfg

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json that both `from_hf_config` and transformers' `SiglipVisionConfig` read back."""
    out = {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
           "vision_use_head": False}
    out.update(self.architecture())
    return out

  def validate(self) -> None:
    if self.hidden_act not in _ACTIVATIONS or _ACTIVATIONS[self.hidden_act] is None:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (known: "
                       f"{sorted(k for k, v in _ACTIVATIONS.items() if v)})")
    self.validate_geometry()
    self.validate_runtime()



def _layer_norm(cfg: SiglipVisionConfig) -> layers.LayerNorm:
  return layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **cfg.dtypes)


class Attention(nnx.Module):
  """Bidirectional multi-head attention with biased q/k/v/out projections."""

  def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
    d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    kw = dict(rngs=rngs, **cfg.dtypes)
    self.q = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.k = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.v = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.o = layers.Dense((n, h), d, axes=("heads", "kv", "embed"), **kw)
    self.impl = cfg.attention_impl

  def __call__(self, x_BTD):
    q, k, v = (constrain(proj(x_BTD), _HEADS) for proj in (self.q, self.k, self.v))
    return self.o(layers.attention(q, k, v, impl=self.impl))


class EncoderLayer(nnx.Module):
  """x + attn(ln1(x)), then x + mlp(ln2(x))."""

  def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
    self.layer_norm1 = _layer_norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.layer_norm2 = _layer_norm(cfg)
    self.mlp = layers.Mlp(cfg.hidden_size, cfg.intermediate_size, act=cfg.activation,
                          rngs=rngs, **cfg.dtypes)

  def __call__(self, x_BTD):
    x_BTD = constrain(x_BTD, _TOKENS)
    with jax.named_scope("attention"):
      x_BTD = x_BTD + self.attn(self.layer_norm1(x_BTD))
    with jax.named_scope("mlp"):
      x_BTD = x_BTD + self.mlp(self.layer_norm2(x_BTD))
    return x_BTD


class SiglipVisionModel(nnx.Module):
  """`vit(pixel_values [B,3,H,W]) -> last_hidden_state [B,P,D]`; `vit.features(px, layer)`."""

  def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    d, dt = cfg.hidden_size, cfg.dtypes
    self.patch_embedding = layers.patch_projection(cfg, rngs=rngs)
    self.position_embedding = layers.param(
        jax.random.normal(rngs.params(), (cfg.num_patches, d), dt["param_dtype"]) * d ** -0.5,
        (None, "embed"))
    self.blocks = layers.StackedBlocks(lambda r: EncoderLayer(cfg, rngs=r), cfg.num_hidden_layers,
                                       remat=cfg.remat, rngs=rngs)
    self.post_layernorm = _layer_norm(cfg)

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """Patch projection plus positions, `[B,3,H,W] -> [B,P,D]` (`hidden_states[0]`)."""
    cfg = self.config
    patches, _ = layers.patchify(pixel_values, cfg.patch_size, cfg.num_channels,
                                 jnp.dtype(cfg.dtype))
    h, w = pixel_values.shape[-2:]
    if (h, w) != (cfg.image_size, cfg.image_size):
      raise ValueError(f"pixel_values are {h}x{w}; this tower takes {cfg.image_size}x"
                       f"{cfg.image_size} (resize with siglip.ImageProcessor first)")
    x_BTD = self.patch_embedding(patches)
    return x_BTD + self.position_embedding[...].astype(x_BTD.dtype)[None]

  def features(self, pixel_values: jax.Array, layer: int = -2) -> jax.Array:
    """`hidden_states[layer]` of transformers: 0 is the embedding, i the output of layer i."""
    depth = self.blocks.depth_of(layer)
    with jax.named_scope("embed"):
      x_BTD = self.embed(pixel_values)
    return self.blocks(x_BTD, depth=depth)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    x_BTD = self.features(pixel_values, layer=-1)
    with jax.named_scope("post_layernorm"):
      return self.post_layernorm(x_BTD)

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

_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention_impl")
# transformers `hidden_act` names -> lift_jax.layers activation names.
_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu",
                "quick_gelu": None, "relu": "relu", "silu": "silu"}
_REQUIRED_HF_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")
_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
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
  # Runtime settings (not part of the checkpoint).
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "auto"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def grid(self) -> int:
    """Patches per side. The stride-p patch convolution floors: so400m-patch14-384 sees 27x27
    patches of the first 378 pixels, the last 6 rows and columns are never read."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

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
    missing = [k for k in _REQUIRED_HF_KEYS if k not in config]
    if missing:
      raise ValueError(f"not a SigLIP vision config: missing {missing}")
    image_size, patch_size = config.get("image_size", 224), config.get("patch_size", 16)
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
      if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
          raise ValueError(f"{name}={value}: only square images and patches are supported")
        value = value[0]
      if name == "image_size":
        image_size = int(value)
      else:
        patch_size = int(value)
    kwargs = {k: config[k] for k in _REQUIRED_HF_KEYS}
    kwargs.update(num_channels=config.get("num_channels", 3), image_size=image_size,
                  patch_size=patch_size, hidden_act=config.get("hidden_act", "gelu_pytorch_tanh"),
                  layer_norm_eps=config.get("layer_norm_eps", 1e-6))
    cfg = cls(**kwargs, **runtime)
    cfg.validate()
    return cfg

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json that both `from_hf_config` and transformers' `SiglipVisionConfig` read back."""
    out = {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
           "vision_use_head": False}
    out.update({k: v for k, v in dataclasses.asdict(self).items() if k not in _RUNTIME_FIELDS})
    return out

  def validate(self) -> None:
    if self.hidden_act not in _ACTIVATIONS or _ACTIVATIONS[self.hidden_act] is None:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (known: "
                       f"{sorted(k for k, v in _ACTIVATIONS.items() if v)})")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                       f"{self.num_attention_heads}")
    if self.image_size < self.patch_size:
      raise ValueError(f"image_size={self.image_size} is smaller than patch_size={self.patch_size}")
    if self.remat not in layers.stack.REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; expected one of {sorted(layers.stack.REMAT_POLICIES)}")
    if self.attention_impl not in layers.IMPLEMENTATIONS:
      raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of "
                       f"{layers.IMPLEMENTATIONS}")


def _dtypes(cfg: SiglipVisionConfig) -> dict[str, Any]:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _layer_norm(cfg: SiglipVisionConfig) -> layers.LayerNorm:
  return layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **_dtypes(cfg))


class Attention(nnx.Module):
  """Bidirectional multi-head attention with biased q/k/v/out projections."""

  def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
    d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    kw = dict(rngs=rngs, **_dtypes(cfg))
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
                          rngs=rngs, **_dtypes(cfg))

  def __call__(self, x_BTD):
    x_BTD = constrain(x_BTD, _TOKENS)
    with jax.named_scope("attention"):
      x_BTD = x_BTD + self.attn(self.layer_norm1(x_BTD))
    with jax.named_scope("mlp"):
      x_BTD = x_BTD + self.mlp(self.layer_norm2(x_BTD))
    return x_BTD


def run_first_layers(stack: layers.StackedBlocks, x: Any, n: int, *shared: Any) -> Any:
  """Runs only the first `n` blocks of a stack (all of them when n equals its depth).

  Layers are picked by index inside the loop instead of slicing the stacked parameters, so no
  partial copy of the weights is made.
  """
  if n == stack.num_layers:
    return stack(x, *shared)
  if n == 0:
    return x
  graphdef, state = nnx.split(stack.layers)

  def body(c, i):
    layer_state = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), state)
    return nnx.merge(graphdef, layer_state)(c, *shared), None

  if stack.remat != "none":
    body = jax.checkpoint(body, policy=layers.stack.REMAT_POLICIES[stack.remat], prevent_cse=False)
  x, _ = jax.lax.scan(body, x, jnp.arange(n))
  return x


class SiglipVisionModel(nnx.Module):
  """`vit(pixel_values [B,3,H,W]) -> last_hidden_state [B,P,D]`; `vit.features(px, layer)`."""

  def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
    dt = _dtypes(cfg)
    # The 14x14 stride-14 Conv2d as a matmul over (c, ph, pw) patch features.
    self.patch_embedding = layers.Dense((c, p, p), d, axes=(None, None, None, "embed"), rngs=rngs,
                                        **dt)
    self.position_embedding = layers.param(
        jax.random.normal(rngs.params(), (cfg.num_patches, d), dt["param_dtype"]) * d ** -0.5,
        (None, "embed"))
    self.blocks = layers.StackedBlocks(lambda r: EncoderLayer(cfg, rngs=r), cfg.num_hidden_layers,
                                       remat=cfg.remat, rngs=rngs)
    self.post_layernorm = _layer_norm(cfg)

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """Patch projection plus positions, `[B,3,H,W] -> [B,P,D]` (`hidden_states[0]`)."""
    cfg = self.config
    if pixel_values.ndim != 4 or pixel_values.shape[1] != cfg.num_channels:
      raise ValueError(f"pixel_values must be [B, {cfg.num_channels}, H, W], got "
                       f"{tuple(pixel_values.shape)}")
    b, c, h, w = pixel_values.shape
    if (h, w) != (cfg.image_size, cfg.image_size):
      raise ValueError(f"pixel_values are {h}x{w}; this tower takes {cfg.image_size}x"
                       f"{cfg.image_size} (resize with siglip.ImageProcessor first)")
    p, g = cfg.patch_size, cfg.grid
    pixel_values = pixel_values[:, :, :g * p, :g * p]  # what the strided convolution reads
    patches = pixel_values.astype(jnp.dtype(cfg.dtype)).reshape(b, c, g, p, g, p)
    patches = patches.transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, p, p)
    x_BTD = self.patch_embedding(patches)
    return x_BTD + self.position_embedding[...].astype(x_BTD.dtype)[None]

  def _layer_index(self, layer: int) -> int:
    n = self.config.num_hidden_layers
    if not -(n + 1) <= layer <= n:
      raise ValueError(f"layer={layer}: this tower has hidden states 0..{n} (or -{n + 1}..-1)")
    return layer % (n + 1)

  def features(self, pixel_values: jax.Array, layer: int = -2) -> jax.Array:
    """`hidden_states[layer]` of transformers: 0 is the embedding, i the output of layer i."""
    n = self._layer_index(layer)
    with jax.named_scope("embed"):
      x_BTD = self.embed(pixel_values)
    return run_first_layers(self.blocks, x_BTD, n)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    x_BTD = self.features(pixel_values, layer=-1)
    with jax.named_scope("post_layernorm"):
      return self.post_layernorm(x_BTD)

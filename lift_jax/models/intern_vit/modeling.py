"""InternViT (OpenGVLab/InternViT-6B-448px-V1-2, the 40B LiFT-Critic's image encoder) in Flax NNX.

`InternVisionModel(cfg)(pixel_values [B,3,H,W]) -> [B,1+P,D]` is the original (trust_remote_code)
`InternVisionModel(...).last_hidden_state`: a 14x14 patch projection, a learned class token, learned
positions (bicubically resized when the patch grid differs from the config's, as the original
does), then pre-norm blocks:
  x + ls1 · proj(attn(q_norm(q), k_norm(k), v)) with q, k, v = qkv(norm1(x)),
  x + ls2 · fc2(gelu(fc1(norm2(x)))).
InternViT-6B uses RMSNorm (eps 1e-6) for norm1/norm2, RMSNorm over the whole width (all heads at
once) for q/k ("qk_normalization"), no qkv bias, layer scale `ls1`/`ls2`, exact GELU, and no final
norm. `features(pixel_values, layer)` is `hidden_states[layer]` (0: embeddings, i: output of block
i), what VILA feeds its projector (VILA1.5-40b: layer -1, CLS dropped by the caller); it runs only
the blocks it needs.
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

_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "relu": "relu", "silu": "silu"}
_NORM_TYPES = ("rms_norm", "layer_norm")
_REQUIRED_HF_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")
_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
# InternViT-6B has 25 heads, which no power-of-two tensor axis divides: its head axis gets a logical
# name of its own, unmapped (replicated) by default; a mesh config may map it where it divides.
HEADS_AXIS = "vision_heads"
LAYER_SCALE_INIT = 0.1  # `initializer_factor` of the published configs


@dataclasses.dataclass(frozen=True)
class InternVisionConfig(layers.PatchGeometry, layers.RuntimeSettings):
  """Architecture (the original `InternVisionConfig` field names) plus runtime settings."""

  hidden_size: int = 3200
  intermediate_size: int = 12800
  num_hidden_layers: int = 45
  num_attention_heads: int = 25
  num_channels: int = 3
  image_size: int = 448
  patch_size: int = 14
  hidden_act: str = "gelu"
  norm_type: str = "rms_norm"
  layer_norm_eps: float = 1e-6
  qk_normalization: bool = True
  qkv_bias: bool = False
  # eps of q_norm/k_norm when it is not `layer_norm_eps` (transformers' InternVL fixes it at 1e-6).
  qk_norm_eps: float | None = None

  @property
  def activation(self) -> str:
    return _ACTIVATIONS[self.hidden_act]

  @property
  def qk_eps(self) -> float:
    return self.layer_norm_eps if self.qk_norm_eps is None else self.qk_norm_eps

  @classmethod
  def internvit_6b_448px_v1_2(cls, **kw) -> "InternVisionConfig":
    """OpenGVLab/InternViT-6B-448px-V1-2 (45 of 48 blocks kept), the tower of VILA1.5-40b."""
    return cls(**kw)

  @classmethod
  def from_hf_config(cls, config: dict[str, Any], **runtime) -> "InternVisionConfig":
    """From the original `InternVisionConfig` dict, or transformers' `InternVLVisionConfig` (or an
    InternVL config holding one under `vision_config`)."""
    if isinstance(config.get("vision_config"), dict):
      config = config["vision_config"]
    kwargs = layers.config_fields(
        config, what="InternViT", required=_REQUIRED_HF_KEYS,
        defaults=dict(num_channels=3, hidden_act="gelu", norm_type="rms_norm",
                      layer_norm_eps=1e-6))
    kwargs.update(image_size=layers.square(config, "image_size", 448),
                  patch_size=layers.square(config, "patch_size", 14))
    if config.get("model_type") == "internvl_vision":  # transformers' spelling of the same model
      if not config.get("use_mean_pooling", True):
        raise ValueError("use_mean_pooling=False adds a final LayerNorm, which InternViT does not "
                         "have and this port does not implement")
      if not config.get("use_absolute_position_embeddings", True):
        raise ValueError("use_absolute_position_embeddings=False is not supported")
      kwargs.update(qk_normalization=bool(config.get("use_qk_norm", False)),
                    qkv_bias=bool(config.get("attention_bias", False)), qk_norm_eps=1e-6)
    else:
      kwargs.update(qk_normalization=bool(config.get("qk_normalization", False)),
                    qkv_bias=bool(config.get("qkv_bias", True)),
                    qk_norm_eps=config.get("qk_norm_eps"))
    cfg = cls(**kwargs, **runtime)
    cfg.validate()
    return cfg

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json in the original layout that `from_hf_config` reads back."""
    out = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
           "initializer_factor": LAYER_SCALE_INIT}
    out.update({k: v for k, v in self.architecture().items()
                if k != "qk_norm_eps" or v is not None})
    return out

  def validate(self) -> None:
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (known: "
                       f"{sorted(_ACTIVATIONS)})")
    if self.norm_type not in _NORM_TYPES:
      raise ValueError(f"norm_type={self.norm_type!r}; expected one of {_NORM_TYPES}")
    self.validate_geometry()
    self.validate_runtime()



def _norm(cfg: InternVisionConfig) -> nnx.Module:
  if cfg.norm_type == "rms_norm":
    return layers.RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **cfg.dtypes)
  return layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **cfg.dtypes)


def bicubic_matrix(out_size: int, in_size: int) -> np.ndarray:
  """`[out, in]` weights of torch's 1-D bicubic resize (align_corners=False, A=-0.75, edge clamp).

  Resizing is linear, so `F.interpolate(..., mode="bicubic")` is this matrix applied on each axis.
  """
  if out_size == in_size:
    return np.eye(in_size)
  a = -0.75
  w = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    src = scale * (i + 0.5) - 0.5
    base = math.floor(src)
    t = src - base
    for off, d in ((-1, 1 + t), (0, t), (1, 1 - t), (2, 2 - t)):
      d = abs(d)
      k = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
      w[i, min(max(base + off, 0), in_size - 1)] += k
  return w


class Attention(nnx.Module):
  """Fused qkv projection, RMSNorm of q and k over the whole width, softmax attention, proj."""

  def __init__(self, cfg: InternVisionConfig, *, rngs: nnx.Rngs):
    d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    kw = dict(rngs=rngs, **cfg.dtypes)
    self.qkv = layers.Dense(d, (3, n, h), axes=("embed", None, HEADS_AXIS, "kv"),
                            use_bias=cfg.qkv_bias, **kw)
    qk = cfg.qk_normalization
    self.q_norm = layers.RMSNorm(d, eps=cfg.qk_eps, **cfg.dtypes) if qk else None
    self.k_norm = layers.RMSNorm(d, eps=cfg.qk_eps, **cfg.dtypes) if qk else None
    self.o = layers.Dense((n, h), d, axes=(HEADS_AXIS, "kv", "embed"), **kw)
    self.impl = cfg.attention_impl

  def __call__(self, x_BTD):
    qkv_BT3NH = self.qkv(x_BTD)
    q, k, v = (qkv_BT3NH[:, :, j] for j in range(3))
    if self.q_norm is not None:
      b, t, n, h = q.shape
      q = self.q_norm(q.reshape(b, t, n * h)).reshape(b, t, n, h)
      k = self.k_norm(k.reshape(b, t, n * h)).reshape(b, t, n, h)
    q, k, v = (constrain(a, _HEADS) for a in (q, k, v))
    return self.o(layers.attention(q, k, v, impl=self.impl))


class EncoderLayer(nnx.Module):
  """x + ls1 · attn(norm1(x)), then x + ls2 · mlp(norm2(x))."""

  def __init__(self, cfg: InternVisionConfig, *, rngs: nnx.Rngs):
    dt = cfg.dtypes
    self.norm1 = _norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm2 = _norm(cfg)
    self.mlp = layers.Mlp(cfg.hidden_size, cfg.intermediate_size, act=cfg.activation, rngs=rngs,
                          **dt)
    init = jnp.full((cfg.hidden_size,), LAYER_SCALE_INIT, dt["param_dtype"])
    self.ls1 = layers.param(init, ("norm",))
    self.ls2 = layers.param(init, ("norm",))
    self.dtype = dt["dtype"]

  def __call__(self, x_BTD):
    x_BTD = constrain(x_BTD, _TOKENS)
    with jax.named_scope("attention"):
      x_BTD = x_BTD + self.attn(self.norm1(x_BTD)) * self.ls1[...].astype(self.dtype)
    with jax.named_scope("mlp"):
      x_BTD = x_BTD + self.mlp(self.norm2(x_BTD)) * self.ls2[...].astype(self.dtype)
    return x_BTD


class InternVisionModel(nnx.Module):
  """`vit(pixel_values [B,3,H,W]) -> last_hidden_state [B,1+P,D]`; `vit.features(px, layer)`."""

  def __init__(self, cfg: InternVisionConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    d, dt = cfg.hidden_size, cfg.dtypes
    self.patch_embedding = layers.patch_projection(cfg, rngs=rngs)
    self.class_embedding = layers.param(
        jax.random.normal(rngs.params(), (d,), dt["param_dtype"]), ("embed",))
    self.position_embedding = layers.param(
        jax.random.normal(rngs.params(), (cfg.num_patches + 1, d), dt["param_dtype"]),
        (None, "embed"))
    self.blocks = layers.StackedBlocks(lambda r: EncoderLayer(cfg, rngs=r), cfg.num_hidden_layers,
                                       remat=cfg.remat, rngs=rngs)

  def positions(self, grid_h: int, grid_w: int) -> jax.Array:
    """`[1 + h·w, D]` fp32 positions: the class row, then the patch grid resized to h x w."""
    cfg = self.config
    pos = self.position_embedding[...].astype(jnp.float32)
    if (grid_h, grid_w) == (cfg.grid, cfg.grid):
      return pos
    g = cfg.grid
    wh = jnp.asarray(bicubic_matrix(grid_h, g), jnp.float32)
    ww = jnp.asarray(bicubic_matrix(grid_w, g), jnp.float32)
    patch_YXD = jnp.einsum("yi,xj,ijD->yxD", wh, ww, pos[1:].reshape(g, g, -1),
                           precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:1], patch_YXD.reshape(grid_h * grid_w, -1)])

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """Class token + patch projection, plus positions: `[B,3,H,W] -> [B,1+P,D]`."""
    cfg = self.config
    patches, (gh, gw) = layers.patchify(pixel_values, cfg.patch_size, cfg.num_channels,
                                        jnp.dtype(cfg.dtype))
    x_BPD = self.patch_embedding(patches)
    b = x_BPD.shape[0]
    cls_B1D = jnp.broadcast_to(self.class_embedding[...].astype(x_BPD.dtype), (b, 1, x_BPD.shape[-1]))
    x_BTD = jnp.concatenate([cls_B1D, x_BPD], axis=1)
    return x_BTD + self.positions(gh, gw).astype(x_BTD.dtype)[None]

  def features(self, pixel_values: jax.Array, layer: int = -1) -> jax.Array:
    """`hidden_states[layer]` of the original: 0 is the embedding, i the output of block i."""
    depth = self.blocks.depth_of(layer)
    with jax.named_scope("embed"):
      x_BTD = self.embed(pixel_values)
    return self.blocks(x_BTD, depth=depth)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    return self.features(pixel_values, layer=-1)

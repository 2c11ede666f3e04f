"""CogVideoX diffusion transformer (2B, 5B, 1.5 and their image-to-video variants) in Flax NNX.

A single-stream "expert" DiT: text tokens and video patch tokens are concatenated `[text, video]` and
share full self-attention; each block modulates them with separate AdaLN-zero shift/scale/gate values.
The model derives all positional information (2B sin-cos table, 5B/1.5 3D RoPE) from its config and
the input size, so the call is `model(latents [B,F,C,H,W], text_embeds [B,S,D_text], timesteps [B])`.
Numerics follow diffusers' `CogVideoXTransformer3DModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax import layers
from lift_jax.parallel.mesh import constrain

# diffusers config keys that carry no information for us (or must hold the one value we support).
_FIXED_DIFFUSERS_KEYS = {
    "activation_fn": "gelu-approximate",
    "timestep_activation_fn": "silu",
}
_IGNORED_DIFFUSERS_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
                           "dropout"}


@dataclasses.dataclass(frozen=True)
class CogVideoXConfig(layers.RuntimeSettings):
  """Architecture (diffusers `config.json` field names) plus runtime settings."""

  num_attention_heads: int = 30
  attention_head_dim: int = 64
  in_channels: int = 16
  out_channels: int = 16
  num_layers: int = 30
  time_embed_dim: int = 512
  ofs_embed_dim: int | None = None
  text_embed_dim: int = 4096
  max_text_seq_length: int = 226
  patch_size: int = 2
  patch_size_t: int | None = None
  patch_bias: bool = True
  sample_height: int = 60
  sample_width: int = 90
  sample_frames: int = 49
  temporal_compression_ratio: int = 4
  spatial_interpolation_scale: float = 1.875
  temporal_interpolation_scale: float = 1.0
  use_rotary_positional_embeddings: bool = False
  use_learned_positional_embeddings: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  norm_eps: float = 1e-5
  norm_elementwise_affine: bool = True
  attention_bias: bool = True

  @property
  def inner_dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @property
  def temporal_patch(self) -> int:
    return self.patch_size_t or 1

  @classmethod
  def cogvideox_2b(cls, **kw) -> "CogVideoXConfig":
    return cls(**kw)

  @classmethod
  def cogvideox_5b(cls, **kw) -> "CogVideoXConfig":
    return cls(**{**dict(num_attention_heads=48, num_layers=42,
                         use_rotary_positional_embeddings=True), **kw})

  @classmethod
  def cogvideox_5b_i2v(cls, **kw) -> "CogVideoXConfig":
    return cls.cogvideox_5b(**{**dict(in_channels=32, use_learned_positional_embeddings=True), **kw})

  @classmethod
  def cogvideox1_5_5b(cls, **kw) -> "CogVideoXConfig":
    return cls.cogvideox_5b(**{**dict(patch_size_t=2, patch_bias=False, sample_height=300,
                                      sample_width=300, sample_frames=81), **kw})

  @classmethod
  def from_diffusers_config(cls, config: dict[str, Any], **runtime) -> "CogVideoXConfig":
    """From a diffusers `transformer/config.json` dict; unsupported values raise, naming the field."""
    kwargs = layers.config_fields(config, what="CogVideoX transformer", config_class=cls,
                                  required=("num_attention_heads", "num_layers"),
                                  fixed=_FIXED_DIFFUSERS_KEYS, ignored=_IGNORED_DIFFUSERS_KEYS)
    return cls(**kwargs, **runtime)

  def to_diffusers_config(self) -> dict[str, Any]:
    out = {"_class_name": "CogVideoXTransformer3DModel"}
    out.update(self.architecture())
    out.update(_FIXED_DIFFUSERS_KEYS)
    out["dropout"] = 0.0
    return out

  def validate(self) -> None:
    if self.attention_head_dim % 16 and self.use_rotary_positional_embeddings:
      raise ValueError(f"attention_head_dim={self.attention_head_dim}: 3D RoPE needs a multiple of 16")
    if not self.use_rotary_positional_embeddings and self.inner_dim % 16:
      raise ValueError(f"inner_dim={self.inner_dim}: the 3D sin-cos table needs a multiple of 16")
    self.validate_runtime()


# ----------------------------------------------------------------------------- positions


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace in float32 (symmetric from both ends), so fractional RoPE grids match."""
  if steps == 1:
    return np.array([start], np.float32)
  step = np.float32((np.float32(end) - np.float32(start)) / np.float32(steps - 1))
  i = np.arange(steps)
  front = np.float32(start) + step * i.astype(np.float32)
  back = np.float32(end) - step * (steps - 1 - i).astype(np.float32)
  return np.where(i < steps // 2, front, back).astype(np.float32)


def _resize_crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int):
  """Fit the token grid inside the training grid, centred (diffusers' get_resize_crop_region_for_grid)."""
  if grid_h / grid_w > base_h / base_w:
    resize_h, resize_w = base_h, int(round(base_h / grid_h * grid_w))
  else:
    resize_w, resize_h = base_w, int(round(base_w / grid_w * grid_h))
  top, left = int(round((base_h - resize_h) / 2.0)), int(round((base_w - resize_w) / 2.0))
  return (top, left), (top + resize_h, left + resize_w)


def rope_tables(cfg: CogVideoXConfig, frames: int, grid_h: int, grid_w: int):
  """The video tokens' 3D RoPE cos/sin `[frames·grid_h·grid_w, head_dim]` for this input size.

  1.0 (5B) places the token grid inside the training grid by resize-and-crop ("linspace" positions);
  1.5 uses plain integer positions ("slice"), as diffusers' pipelines do.
  """
  if cfg.patch_size_t is None:
    base_h, base_w = cfg.sample_height // cfg.patch_size, cfg.sample_width // cfg.patch_size
    (top, left), (bottom, right) = _resize_crop_region(grid_h, grid_w, base_h, base_w)
    pos_h = _torch_linspace(top, bottom * (grid_h - 1) / grid_h, grid_h)
    pos_w = _torch_linspace(left, right * (grid_w - 1) / grid_w, grid_w)
    pos_t = _torch_linspace(0, frames * (frames - 1) / frames, frames)
  else:
    pos_t = np.arange(frames, dtype=np.float32)
    pos_h = np.arange(grid_h, dtype=np.float32)
    pos_w = np.arange(grid_w, dtype=np.float32)
  return layers.rope_3d_tables(cfg.attention_head_dim, pos_t, pos_h, pos_w)


def sincos_table(cfg: CogVideoXConfig, frames: int, grid_h: int, grid_w: int) -> np.ndarray:
  return layers.sincos_3d_table(cfg.inner_dim, frames, grid_h, grid_w,
                                spatial_scale=cfg.spatial_interpolation_scale,
                                temporal_scale=cfg.temporal_interpolation_scale)


# ----------------------------------------------------------------------------- modules



def _layer_norm(cfg: CogVideoXConfig) -> layers.LayerNorm:
  affine = cfg.norm_elementwise_affine
  return layers.LayerNorm(cfg.inner_dim, eps=cfg.norm_eps, use_scale=affine, use_bias=affine,
                          **cfg.dtypes)


class AdaNormZero(nnx.Module):
  """One shared LayerNorm, six modulation vectors: shift, scale, gate for video, then for text."""

  def __init__(self, cfg: CogVideoXConfig, *, rngs: nnx.Rngs):
    d = cfg.inner_dim
    self.linear = layers.Dense(cfg.time_embed_dim, 6 * d, axes=("time_embed", "embed"), rngs=rngs,
                               **cfg.dtypes)
    self.norm = _layer_norm(cfg)

  def __call__(self, x, enc, emb):
    shift, scale, gate, e_shift, e_scale, e_gate = jnp.split(self.linear(jax.nn.silu(emb)), 6, -1)
    x = layers.modulate(self.norm(x), shift, scale)
    enc = layers.modulate(self.norm(enc), e_shift, e_scale)
    return x, enc, gate[:, None, :], e_gate[:, None, :]


class Attention(nnx.Module):
  """Joint text+video self-attention with per-head QK LayerNorm and RoPE on video tokens only."""

  def __init__(self, cfg: CogVideoXConfig, *, rngs: nnx.Rngs):
    d, n, h = cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim
    kw = dict(use_bias=cfg.attention_bias, rngs=rngs, **cfg.dtypes)
    self.to_q = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.to_k = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.to_v = layers.Dense(d, (n, h), axes=("embed", "heads", "kv"), **kw)
    self.norm_q = layers.LayerNorm(h, eps=1e-6, **cfg.dtypes)
    self.norm_k = layers.LayerNorm(h, eps=1e-6, **cfg.dtypes)
    self.to_out = layers.Dense((n, h), d, axes=("heads", "kv", "embed"), rngs=rngs,
                               **cfg.dtypes)
    self.impl = cfg.attention_impl

  def __call__(self, h_BTD, text_len: int, rope):
    q = self.norm_q(self.to_q(h_BTD))
    k = self.norm_k(self.to_k(h_BTD))
    v = self.to_v(h_BTD)
    if rope is not None:
      cos, sin = rope
      rotate = lambda t: jnp.concatenate(
          [t[:, :text_len], layers.apply_rope_interleaved(t[:, text_len:], cos, sin)], axis=1)
      q, k = rotate(q), rotate(k)
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q, k, v = (constrain(t, heads) for t in (q, k, v))
    o_BTNH = layers.attention(q, k, v, impl=self.impl)
    return self.to_out(o_BTNH)


class CogVideoXBlock(nnx.Module):

  def __init__(self, cfg: CogVideoXConfig, *, rngs: nnx.Rngs):
    self.norm1 = AdaNormZero(cfg, rngs=rngs)
    self.attn1 = Attention(cfg, rngs=rngs)
    self.norm2 = AdaNormZero(cfg, rngs=rngs)
    self.ff = layers.Mlp(cfg.inner_dim, 4 * cfg.inner_dim, act="gelu_tanh", rngs=rngs,
                         **cfg.dtypes)

  def __call__(self, carry, emb, rope):
    x, enc = carry
    tokens = ("activation_batch", "activation_length", "activation_embed")
    x, enc = constrain(x, tokens), constrain(enc, tokens)
    text_len = enc.shape[1]
    with jax.named_scope("attention"):
      nx, ne, gate, e_gate = self.norm1(x, enc, emb)
      o = self.attn1(jnp.concatenate([ne, nx], axis=1), text_len, rope)
      x = x + gate * o[:, text_len:]
      enc = enc + e_gate * o[:, :text_len]
    with jax.named_scope("feed_forward"):
      nx, ne, gate, e_gate = self.norm2(x, enc, emb)
      f = self.ff(jnp.concatenate([ne, nx], axis=1))
      x = x + gate * f[:, text_len:]
      enc = enc + e_gate * f[:, :text_len]
    return x, enc


class TimestepEmbedding(nnx.Module):
  """sinusoid(t) -> Linear -> SiLU -> Linear."""

  def __init__(self, in_dim: int, out_dim: int, cfg: CogVideoXConfig, *, rngs: nnx.Rngs):
    self.linear_1 = layers.Dense(in_dim, out_dim, axes=("embed", "time_embed"), rngs=rngs,
                                 **cfg.dtypes)
    self.linear_2 = layers.Dense(out_dim, out_dim, axes=("time_embed", None), rngs=rngs,
                                 **cfg.dtypes)
    self.in_dim = in_dim
    self.flip, self.shift = cfg.flip_sin_to_cos, cfg.freq_shift
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, t):
    emb = layers.timestep_embedding(t, self.in_dim, flip_sin_to_cos=self.flip,
                                    freq_shift=self.shift).astype(self.dtype)
    return self.linear_2(jax.nn.silu(self.linear_1(emb)))


class CogVideoXTransformer3D(nnx.Module):
  """`model(latents [B,F,C,H,W], text_embeds [B,S,D_text], timesteps [B]) -> v [B,F,C_out,H,W]`."""

  def __init__(self, cfg: CogVideoXConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    d, p, pt = cfg.inner_dim, cfg.patch_size, cfg.temporal_patch
    dt = cfg.dtypes
    self.patch_proj = layers.Dense((cfg.in_channels, pt, p, p), d,
                                   axes=(None, None, None, None, "embed"),
                                   use_bias=cfg.patch_bias or cfg.patch_size_t is not None,
                                   rngs=rngs, **dt)
    self.text_proj = layers.Dense(cfg.text_embed_dim, d, axes=("text_embed", "embed"), rngs=rngs,
                                  **dt)
    if cfg.use_learned_positional_embeddings:
      frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
      table = sincos_table(cfg, frames, cfg.sample_height // p, cfg.sample_width // p)
      joint = np.concatenate([np.zeros((cfg.max_text_seq_length, d), np.float32), table])[None]
      self.pos_embedding = layers.param(jnp.asarray(joint, dt["param_dtype"]),
                                        (None, None, "embed"))
    self.time_embedding = TimestepEmbedding(d, cfg.time_embed_dim, cfg, rngs=rngs)
    if cfg.ofs_embed_dim:
      self.ofs_embedding = TimestepEmbedding(cfg.ofs_embed_dim, cfg.ofs_embed_dim, cfg, rngs=rngs)
    self.blocks = layers.StackedBlocks(lambda r: CogVideoXBlock(cfg, rngs=r), cfg.num_layers,
                                       remat=cfg.remat, rngs=rngs)
    self.norm_final = _layer_norm(cfg)
    self.norm_out_linear = layers.Dense(cfg.time_embed_dim, 2 * d, axes=("time_embed", "embed"),
                                        rngs=rngs, **dt)
    self.norm_out = _layer_norm(cfg)
    self.proj_out = layers.Dense(d, (cfg.out_channels, pt, p, p),
                                 axes=("embed", None, None, None, None), rngs=rngs, **dt)

  def check_input(self, latents_shape, text_shape) -> None:
    cfg = self.config
    if len(latents_shape) != 5:
      raise ValueError(f"latents must be [B, F, C, H, W], got shape {tuple(latents_shape)}")
    b, f, c, h, w = latents_shape
    if c != cfg.in_channels:
      raise ValueError(f"latents have {c} channels (axis 2 of [B,F,C,H,W]); the model expects "
                       f"{cfg.in_channels}")
    if h % cfg.patch_size or w % cfg.patch_size:
      raise ValueError(f"latent height/width {h}x{w} must be multiples of patch_size {cfg.patch_size}")
    if f % cfg.temporal_patch:
      raise ValueError(f"{f} latent frames: CogVideoX 1.5 needs a multiple of patch_size_t "
                       f"{cfg.temporal_patch} (pad the latents as its pipeline does)")
    if len(text_shape) != 3 or text_shape[0] != b or text_shape[2] != cfg.text_embed_dim:
      raise ValueError(f"text_embeds must be [B={b}, S, {cfg.text_embed_dim}], got {tuple(text_shape)}")

  def __call__(self, latents: jax.Array, text_embeds: jax.Array, timesteps: jax.Array,
               ofs: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    self.check_input(latents.shape, text_embeds.shape)
    dtype = jnp.dtype(cfg.dtype)
    b, f, c, h, w = latents.shape
    p, pt = cfg.patch_size, cfg.temporal_patch
    ft, gh, gw = f // pt, h // p, w // p
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))

    with jax.named_scope("embed"):
      emb = self.time_embedding(timesteps)
      if cfg.ofs_embed_dim:
        if ofs is None:
          raise ValueError("this CogVideoX checkpoint has an ofs embedding: pass `ofs` (its "
                           "pipeline uses 2.0)")
        emb = emb + self.ofs_embedding(jnp.broadcast_to(jnp.asarray(ofs), (b,)))
      patches = latents.astype(dtype).reshape(b, ft, pt, c, gh, p, gw, p)
      patches = patches.transpose(0, 1, 4, 6, 3, 2, 5, 7).reshape(b, ft * gh * gw, c, pt, p, p)
      x = self.patch_proj(patches)
      enc = self.text_proj(text_embeds)
      text_len = enc.shape[1]
      rope = None
      if cfg.use_learned_positional_embeddings and (gh, gw) != (cfg.sample_height // p,
                                                                cfg.sample_width // p):
        raise ValueError(f"this checkpoint's learned positions fix the latent size to "
                         f"{cfg.sample_height}x{cfg.sample_width}; got {h}x{w}")
      default_frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
      if cfg.use_learned_positional_embeddings and text_len != cfg.max_text_seq_length:
        raise ValueError(f"this checkpoint's learned positions need exactly "
                         f"{cfg.max_text_seq_length} text tokens; got {text_len}")
      if cfg.use_learned_positional_embeddings and f == default_frames:
        pos = self.pos_embedding[...].astype(dtype)[:, : text_len + x.shape[1]]
        enc, x = enc + pos[:, :text_len], x + pos[:, text_len:]
      elif not cfg.use_rotary_positional_embeddings or cfg.use_learned_positional_embeddings:
        # diffusers recomputes the sin-cos table for any other size (also over a learned table).
        x = x + jnp.asarray(sincos_table(cfg, ft, gh, gw), dtype)[None]
      if cfg.use_rotary_positional_embeddings:
        rope = tuple(jnp.asarray(t) for t in rope_tables(cfg, ft, gh, gw))

    x, enc = self.blocks((x, enc), emb, rope)

    with jax.named_scope("head"):
      x = self.norm_final(x)
      shift, scale = jnp.split(self.norm_out_linear(jax.nn.silu(emb)), 2, axis=-1)
      x = layers.modulate(self.norm_out(x), shift, scale)
      out = self.proj_out(x)  # [B, T, C_out, pt, p, p]
      out = out.reshape(b, ft, gh, gw, cfg.out_channels, pt, p, p)
      out = out.transpose(0, 1, 5, 4, 2, 6, 3, 7).reshape(b, f, cfg.out_channels, h, w)
    return out

"""Positional and timestep embeddings.

Tables that depend only on static shapes (3D sin-cos, 3D RoPE) are built on the host in NumPy at
trace time, in the same precision as the PyTorch references, and enter the graph as constants.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def timestep_embedding(t: jax.Array, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps `[B] -> [B, dim]`, in fp32."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """[sin(pos·ω), cos(pos·ω)] with ω in float64, as diffusers' `get_1d_sincos_pos_embed_from_grid`."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d_table(dim: int, frames: int, height: int, width: int, *,
                    spatial_scale: float = 1.0, temporal_scale: float = 1.0) -> np.ndarray:
  """3D sin-cos table `[frames·height·width, dim]`, tokens in (t, h, w) order.

  The first quarter of the channels encodes time, the rest space; of the spatial part the first half
  encodes the column (w), the second the row (h), as CogVideoX-2B was trained.
  """
  if dim % 16:
    raise ValueError(f"3D sin-cos embedding dim must be divisible by 16, got {dim}")
  dim_t, dim_s = dim // 4, 3 * dim // 4
  pos_h = (np.arange(height, dtype=np.float32) / spatial_scale).astype(np.float32)
  pos_w = (np.arange(width, dtype=np.float32) / spatial_scale).astype(np.float32)
  grid_w, grid_h = np.meshgrid(pos_w, pos_h)  # each [height, width]
  spatial = np.concatenate([sincos_1d(dim_s // 2, grid_w), sincos_1d(dim_s // 2, grid_h)], axis=1)
  temporal = sincos_1d(dim_t, (np.arange(frames, dtype=np.float32) / temporal_scale))
  table = np.concatenate([
      np.broadcast_to(temporal[:, None, :], (frames, height * width, dim_t)),
      np.broadcast_to(spatial[None, :, :], (frames, height * width, dim_s)),
  ], axis=-1)
  return table.reshape(frames * height * width, dim).astype(np.float32)


def rope_1d(dim: int, positions: np.ndarray, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
  """cos/sin `[S, dim]` in fp32 with each frequency repeated for its interleaved (2i, 2i+1) pair."""
  freqs = (1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32)
  angles = np.outer(positions.astype(np.float32), freqs).astype(np.float32)
  return np.repeat(np.cos(angles), 2, axis=1), np.repeat(np.sin(angles), 2, axis=1)


def rope_3d_tables(head_dim: int, pos_t: np.ndarray, pos_h: np.ndarray, pos_w: np.ndarray,
                   theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
  """3D RoPE cos/sin `[T·H·W, head_dim]`: head dims split [t: 1/4, h: 3/8, w: 3/8], (t, h, w) order."""
  dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
  parts = [rope_1d(dim_t, pos_t, theta), rope_1d(dim_hw, pos_h, theta), rope_1d(dim_hw, pos_w, theta)]
  nt, nh, nw = len(pos_t), len(pos_h), len(pos_w)

  def combine(i):
    t, h, w = (p[i] for p in parts)
    return np.concatenate([
        np.broadcast_to(t[:, None, None, :], (nt, nh, nw, dim_t)),
        np.broadcast_to(h[None, :, None, :], (nt, nh, nw, dim_hw)),
        np.broadcast_to(w[None, None, :, :], (nt, nh, nw, dim_hw)),
    ], axis=-1).reshape(nt * nh * nw, -1)

  return combine(0), combine(1)


def apply_rope_interleaved(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates pairs (x[2i], x[2i+1]) of `[B, S, N, H]` by `[S, H]` angles, in fp32."""
  x32 = x.astype(jnp.float32)
  pairs = x32.reshape(*x.shape[:-1], -1, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  cos = jnp.asarray(cos, jnp.float32)[None, :, None, :]
  sin = jnp.asarray(sin, jnp.float32)[None, :, None, :]
  return (x32 * cos + rotated * sin).astype(x.dtype)


def apply_rope_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the halves (x[:H/2], x[H/2:]) of `[B, S, N, H]` (the Llama convention), in fp32.

  `cos`/`sin` are `[B or 1, S, H]` with the frequencies repeated across both halves.
  """
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  cos = cos.astype(jnp.float32)[:, :, None, :]
  sin = sin.astype(jnp.float32)[:, :, None, :]
  return (x32 * cos + rotated * sin).astype(x.dtype)

"""Normalization layers (statistics always in float32) and adaptive modulation helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax.layers.linear import param


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, two-pass variance in fp32 (as torch computes it)."""

  def __init__(self, dim: int, *, eps: float = 1e-5, use_scale: bool = True, use_bias: bool = True,
               axes: tuple[str | None, ...] = ("norm",), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init: ones / zeros, as torch
    self.eps = eps
    self.dtype = dtype
    self.scale = param(jnp.ones((dim,), param_dtype), axes) if use_scale else None
    self.bias = param(jnp.zeros((dim,), param_dtype), axes) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_norm(x, self.eps)
    if self.scale is not None:
      y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Parameter-free LayerNorm of the last axis; returns fp32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centered = x - mean
  var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
  return centered * jax.lax.rsqrt(var + eps)


class RMSNorm(nnx.Module):
  """RMSNorm (T5, Llama, InternViT): x / rms(x) · scale, statistics in fp32.

  `cast_before_scale=True` casts the normalized value back to the input dtype before multiplying by
  the scale, which is how Llama and T5 order it in transformers.
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, axes: tuple[str | None, ...] = ("norm",),
               cast_before_scale: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    del rngs
    self.eps = eps
    self.dtype = dtype
    self.cast_before_scale = cast_before_scale
    self.scale = param(jnp.ones((dim,), param_dtype), axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.cast_before_scale:
      return (self.scale[...].astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)
    return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """AdaLN modulation `x·(1+scale)+shift` with per-sample [B, D] shift/scale broadcast over tokens."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]

"""Shared layers against their PyTorch/diffusers counterparts and plain NumPy."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models import embeddings as torch_emb
from flax import nnx

from lift_jax import layers
import importlib
attention_module = importlib.import_module("lift_jax.layers.attention")
from tests.reference import rel_err


@pytest.mark.parametrize("dim,shift", [(64, 0), (33, 1)])
def test_timestep_embedding(dim, shift):
  t = np.array([0, 3, 999, 500.5], np.float32)
  ours = layers.timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=True, freq_shift=shift)
  ref = torch_emb.get_timestep_embedding(torch.tensor(t), dim, flip_sin_to_cos=True,
                                         downscale_freq_shift=shift)
  # sin/cos of arguments near 1e3 in fp32 carry ~1e-4 absolute rounding in both libraries.
  assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize("frames,height,width", [(13, 30, 45), (2, 3, 5)])
def test_sincos_3d_table(frames, height, width):
  ours = layers.sincos_3d_table(64, frames, height, width, spatial_scale=1.875)
  ref = torch_emb.get_3d_sincos_pos_embed(64, (width, height), frames, 1.875, 1.0, output_type="pt")
  assert rel_err(ours, ref.flatten(0, 1)) < 1e-7


def test_rope_tables_and_interleaved_rotation():
  pos = [np.arange(n, dtype=np.float32) for n in (3, 4, 5)]
  cos, sin = layers.rope_3d_tables(32, *pos)
  ref_cos, ref_sin = torch_emb.get_3d_rotary_pos_embed(32, None, (4, 5), 3, grid_type="slice",
                                                       max_size=(4, 5))
  assert rel_err(cos, ref_cos) < 1e-6 and rel_err(sin, ref_sin) < 1e-6
  x = np.random.default_rng(0).normal(size=(2, 60, 3, 32)).astype(np.float32)  # [B, S, N, H]
  ours = layers.apply_rope_interleaved(jnp.asarray(x), cos, sin)
  ref = torch_emb.apply_rotary_emb(torch.tensor(x).transpose(1, 2), (ref_cos, ref_sin))
  assert rel_err(ours, ref.transpose(1, 2)) < 1e-6


def _naive_attention(q, k, v, bias=None, mask=None):
  n, kv = q.shape[2], k.shape[2]
  k, v = np.repeat(k, n // kv, axis=2), np.repeat(v, n // kv, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = np.where(mask, logits, -1e30)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p, v)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_naive_with_gqa_bias_and_mask(kv_heads):
  rng = np.random.default_rng(kv_heads)
  q = rng.normal(size=(2, 5, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, 7, kv_heads, 8)).astype(np.float32)
  v = rng.normal(size=(2, 7, kv_heads, 8)).astype(np.float32)
  bias = rng.normal(size=(1, 4, 5, 7)).astype(np.float32)
  mask = np.ones((2, 1, 5, 7), bool)
  mask[1, :, :, 5:] = False  # padded keys of the second example
  out = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), impl="xla",
                         bias=jnp.asarray(bias), mask=jnp.asarray(mask))
  assert rel_err(out, _naive_attention(q, k, v, bias, mask)) < 1e-5


def test_unavailable_kernels_fall_back_with_a_reason():
  q = jnp.ones((1, 4, 2, 8))
  expected = layers.attention(q, q, q, impl="xla")
  for impl in ("cudnn", "splash"):
    with pytest.warns(RuntimeWarning, match=f"attention impl '{impl}'"):
      attention_module._warn_once.cache_clear()
      out = layers.attention(q, q, q, impl=impl)
    np.testing.assert_array_equal(out, expected)
  with pytest.raises(ValueError, match="must be one of"):
    layers.attention(q, q, q, impl="flash")


def test_layer_norm_matches_torch():
  x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, 16)).astype(np.float32)
  ln = layers.LayerNorm(16, eps=1e-5)
  ln.scale[...] = jnp.linspace(0.5, 1.5, 16)
  ln.bias[...] = jnp.linspace(-1, 1, 16)
  ref = torch.nn.LayerNorm(16, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.linspace(0.5, 1.5, 16))
    ref.bias.copy_(torch.linspace(-1, 1, 16))
  assert rel_err(ln(jnp.asarray(x)), ref(torch.tensor(x))) < 1e-6


def test_rms_norm_matches_numpy():
  x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
  norm = layers.RMSNorm(16, eps=1e-6)
  norm.scale[...] = jnp.arange(16, dtype=jnp.float32) / 8
  expected = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * (np.arange(16) / 8)
  assert rel_err(norm(jnp.asarray(x)), expected) < 1e-6


def test_dense_head_projection_equals_matmul():
  dense = layers.Dense(12, (3, 4), axes=("embed", "heads", "kv"), rngs=nnx.Rngs(0))
  x = np.random.default_rng(2).normal(size=(2, 5, 12)).astype(np.float32)
  kernel = np.asarray(dense.kernel[...]).reshape(12, 12)
  expected = (x @ kernel + np.asarray(dense.bias[...]).reshape(12)).reshape(2, 5, 3, 4)
  assert rel_err(dense(jnp.asarray(x)), expected) < 1e-6
  assert dense.kernel.get_metadata()["out_sharding"] == ("embed", "heads", "kv")


def test_stacked_blocks_scan_equals_python_loop():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.dense = layers.Dense(8, 8, axes=("embed", "mlp"), rngs=rngs)

    def __call__(self, x, scale):
      return x + scale * jnp.tanh(self.dense(x))

  stack = layers.StackedBlocks(Block, 3, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 8))
  expected = x
  for i in range(3):
    kernel, bias = stack.layers.dense.kernel[...][i], stack.layers.dense.bias[...][i]
    expected = expected + 0.5 * jnp.tanh(expected @ kernel + bias)
  assert stack.layers.dense.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
  assert rel_err(stack(x, 0.5), expected) < 1e-6


def test_chunked_attention_equals_full_and_its_gradient():
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 1100, 2, 8)).astype(np.float32)) for _ in range(3))
  full = lambda q: layers.attention(q, k, v, impl="xla")
  chunked = lambda q: layers.attention(q, k, v, impl="chunked")
  assert rel_err(chunked(q), full(q)) < 1e-6
  g_full = jax.grad(lambda q: jnp.sum(full(q) ** 2))(q)
  g_chunked = jax.grad(lambda q: jnp.sum(chunked(q) ** 2))(q)
  assert rel_err(g_chunked, g_full) < 1e-5

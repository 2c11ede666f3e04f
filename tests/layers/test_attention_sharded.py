"""Fused attention inside shard_map and context parallelism on 8 fake CPU devices.

Splash runs in Pallas interpret mode (the TPU kernel's own code, executed by XLA on CPU), so the
padding, block, segment-id and shard_map logic that a TPU runs is what is checked here.
"""

import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lift_jax import layers, parallel
from tests.reference import rel_err

attention_module = importlib.import_module("lift_jax.layers.attention")


def _qkv(b=4, t=200, n=4, kv=2, h=64, s=None, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  s = t if s is None else s
  return (jax.random.normal(keys[0], (b, t, n, h)), jax.random.normal(keys[1], (b, s, kv, h)),
          jax.random.normal(keys[2], (b, s, kv, h)))


def _value_and_grads(impl, q, k, v, mesh=None, **kw):
  weight = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)

  def loss(q, k, v):
    out = layers.attention(q, k, v, impl=impl, **kw)
    return jnp.sum(out * weight), out

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  if mesh is None:
    (_, out), grads = fn(q, k, v)
  else:
    with parallel.use_mesh(mesh):
      (_, out), grads = fn(q, k, v)
  return out, grads


def _assert_close(got, want, tol=1e-5):
  out, grads = got
  out_ref, grads_ref = want
  assert rel_err(out, out_ref) <= tol
  for name, g, g_ref in zip("qkv", grads, grads_ref):
    assert rel_err(g, g_ref) <= tol, name


def test_splash_in_shard_map_equals_xla_forward_and_gradients():
  """Heads over tensor=2, batch over fsdp=4; 100 tokens (padded to a block), head dim 64 (padded
  to 128), 2 kv heads for 4 query heads."""
  q, k, v = _qkv(t=100)
  want = _value_and_grads("xla", q, k, v)
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  with layers.attention_settings(interpret=True, block_q=128, block_kv=128), \
      warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)  # a fallback to xla would warn
    got = _value_and_grads("splash", q, k, v, mesh=mesh)
  _assert_close(got, want)
  assert got[0].sharding.spec[0] in ("fsdp", ("data", "fsdp"))


@pytest.mark.parametrize("context", [2, 4])
def test_context_parallel_equals_unsharded(context):
  """The sequence over `context`; 51 tokens need padding for both sizes; causal too."""
  q, k, v = _qkv(b=2, t=51, n=2, kv=2, h=16)
  mesh = parallel.make_mesh({"fsdp": 8 // context, "context": context})
  for causal in (False, True):
    want = _value_and_grads("xla", q, k, v, is_causal=causal)
    got = _value_and_grads("xla", q, k, v, mesh=mesh, is_causal=causal)
    _assert_close(got, want)


@pytest.mark.slow
def test_context_parallel_splash_equals_xla():
  q, k, v = _qkv(b=2, t=150, n=4, kv=4, h=32)  # 75 tokens a device, padded to 128
  want = _value_and_grads("xla", q, k, v)
  mesh = parallel.make_mesh({"fsdp": 2, "tensor": 2, "context": 2})
  with layers.attention_settings(interpret=True, block_q=128, block_kv=128):
    got = _value_and_grads("splash", q, k, v, mesh=mesh)
  _assert_close(got, want)


def test_cpu_keeps_xla_for_fused_kernels():
  q, k, v = _qkv(b=2, t=16, n=2, kv=2, h=8)
  attention_module._warn_once.cache_clear()
  with pytest.warns(RuntimeWarning, match="needs a TPU"):
    out = layers.attention(q, k, v, impl="splash")
  assert rel_err(out, layers.attention(q, k, v, impl="xla")) == 0.0


def test_accelerator_errors_instead_of_falling_back(monkeypatch):
  """On a GPU/TPU a kernel that cannot serve is a named error, and so is a huge XLA score matrix."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match="'cudnn' needs a GPU and fp16/bf16.*model.attention_impl"):
    layers.resolve_impl("cudnn", jnp.float32)
  with pytest.raises(ValueError, match="'splash' needs a TPU.*model.attention_impl"):
    layers.resolve_impl("splash", jnp.bfloat16)
  big = jax.ShapeDtypeStruct((1, 17776, 30, 64), jnp.float32)
  with pytest.raises(ValueError, match=r"~35 GiB score matrix.*xla_max_score_gib"):
    jax.eval_shape(lambda q: layers.attention(q, q, q, impl="xla"), big)


def test_bad_block_sizes_name_the_setting():
  q, k, v = _qkv(b=1, t=16, n=1, kv=1, h=8)
  with layers.attention_settings(interpret=True, block_q=100):
    with pytest.raises(ValueError, match=r"block_q=100 must be a positive multiple of 128 "
                                         r"\(set model.attention.block_q\)"):
      layers.attention(q, k, v, impl="splash")
  with layers.attention_settings(interpret=True, block_kv=512, block_kv_compute=384):
    with pytest.raises(ValueError, match="block_kv_compute"):
      jax.eval_shape(lambda q: layers.attention(q, q, q, impl="splash"),
                     jax.ShapeDtypeStruct((1, 1024, 1, 8), jnp.float32))


def test_mask_and_bias_shard_with_batch_and_heads():
  """An explicit mask/bias rides through shard_map split like the batch/heads it has (cuDNN's path;
  checked here with the per-device XLA kernel)."""
  from lift_jax.layers import sharded_attention

  q, k, v = _qkv(b=4, t=16, n=4, kv=2, h=8)
  mask = jnp.asarray(np.random.default_rng(0).random((4, 1, 16, 16)) > 0.3)
  mask = mask | jnp.eye(16, dtype=bool)
  bias = jax.random.normal(jax.random.key(1), (1, 4, 16, 16))
  want = layers.attention(q, k, v, impl="xla", mask=mask, bias=bias)
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  with parallel.use_mesh(mesh):
    got = jax.jit(lambda q, k, v, m, bi: sharded_attention.attention(
        q, k, v, impl="xla", settings=layers.AttentionSettings(), scale=8 ** -0.5,
        is_causal=False, mask=m, bias=bi))(q, k, v, mask, bias)
  assert rel_err(got, want) <= 1e-6


def test_cudnn_wrapper_pads_head_dim_and_masks_padded_keys(monkeypatch):
  """The cuDNN path's own logic (head dim 12 padded to 16, padded keys cut by sequence lengths,
  the scale of the unpadded head dim) inside shard_map with context=2, XLA standing in for the
  kernel (no GPU here)."""
  from lift_jax.layers import fused_attention, sharded_attention

  real = jax.nn.dot_product_attention
  calls = []

  def stand_in(*args, implementation=None, **kw):
    calls.append((implementation, args[0].shape[-1], kw.get("key_value_seq_lengths") is not None))
    return real(*args, implementation="xla", **kw)

  monkeypatch.setattr(fused_attention.jax.nn, "dot_product_attention", stand_in)
  q, k, v = _qkv(b=2, t=51, n=4, kv=2, h=12)  # 51 tokens: padded to 52 for context=2
  mesh = parallel.make_mesh({"fsdp": 2, "tensor": 2, "context": 2})
  with parallel.use_mesh(mesh):
    got = jax.jit(lambda q, k, v: sharded_attention.attention(
        q, k, v, impl="cudnn", settings=layers.AttentionSettings(), scale=12 ** -0.5,
        is_causal=False))(q, k, v)
  assert calls and all(c == ("cudnn", 16, True) for c in calls)
  monkeypatch.undo()
  assert rel_err(got, layers.attention(q, k, v, impl="xla")) <= 1e-5


def test_batch_axes_the_batch_cannot_use_split_the_heads():
  """Batch 2 on fsdp=4 x tensor=2 with 8 heads: fsdp goes to the heads, not to redundant copies;
  heads the tensor axis does not divide (InternViT's 25) stay whole."""
  from lift_jax.layers import sharded_attention

  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  split = sharded_attention._split_batch_and_heads
  assert split(mesh, 2, 8, ("data", "fsdp"), "tensor") == ("data", ("tensor", "fsdp"))
  assert split(mesh, 8, 8, ("data", "fsdp"), "tensor") == (("data", "fsdp"), "tensor")
  assert split(mesh, 2, 25, ("data", "fsdp"), "tensor") == ("data", None)
  for n in (8, 3):  # 3 heads: neither batch nor heads split over fsdp/tensor, still exact
    q, k, v = _qkv(b=2, t=16, n=n, kv=n, h=8)
    with parallel.use_mesh(mesh):
      got = jax.jit(lambda q, k, v: sharded_attention.attention(
          q, k, v, impl="xla", settings=layers.AttentionSettings(), scale=8 ** -0.5,
          is_causal=False))(q, k, v)
    assert rel_err(got, layers.attention(q, k, v, impl="xla")) <= 1e-6

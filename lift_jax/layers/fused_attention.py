"""One device's attention kernels and their shape rules: XLA, cuDNN flash (GPU), splash (TPU).

`local_attention` computes attention for the shard of queries a device holds against the keys and
values it holds (all of them after a context all-gather). Inputs may be padded: query rows from
global position `q_len` on and key columns from `kv_len` on are padding; padded keys are masked out
and padded query rows give values the caller slices away. `q_offset` is the global position of the
first local query row (context parallelism), `None` when the device holds every query.

Shape rules handled here rather than by the caller:
  splash  sequence lengths a multiple of the block sizes (`block_sizes` picks them, caller pads),
          the head dim zero-padded to `settings.splash_head_multiple` (zeros change no logit, and
          the padded output columns are dropped); key/value heads may be fewer than query heads.
  cudnn   the head dim zero-padded to a multiple of 8; padded keys masked by sequence lengths.
A kernel that still cannot serve a shape raises a ValueError naming the constraint and the setting.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

LANES = 128  # splash block sizes must be multiples of the TPU lane width
# checkpoint_names of attention's inputs and output (the remat policies in `layers.remat` keep them
# by name); splash's own residuals (output, logsumexp) carry OUT_NAME too, so keeping it spares the
# backward pass the kernel's forward.
QKV_NAMES = ("query_proj", "key_proj", "value_proj")
OUT_NAME = "attention_out"
CUDNN_HEAD_MULTIPLE = 8


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def block_sizes(impl: str, q_len: int, kv_len: int, settings: Any) -> tuple[int, int, int]:
  """(block_q, block_kv, block_kv_compute) for one device's `q_len` queries and `kv_len` keys.

  Blocks shrink to the (lane-rounded) sequence when it is shorter than the configured block, so a
  short sequence is not padded to a long block. Non-blocked kernels get (1, 1, 1).
  """
  if impl != "splash":
    return 1, 1, 1
  for name in ("block_q", "block_kv", "block_kv_compute"):
    value = getattr(settings, name)
    if value is not None and (value <= 0 or value % LANES):
      raise ValueError(f"splash attention: {name}={value} must be a positive multiple of {LANES} "
                       f"(set model.attention.{name})")
  bq = min(settings.block_q, round_up(q_len, LANES))
  bkv = min(settings.block_kv, round_up(kv_len, LANES))
  bkv_compute = min(settings.block_kv_compute or bkv, bkv)
  if bkv % bkv_compute:
    raise ValueError(f"splash attention: block_kv={bkv} (for {kv_len} keys) is not a multiple of "
                     f"block_kv_compute={bkv_compute}; set model.attention.block_kv_compute to a "
                     f"divisor of model.attention.block_kv")
  return bq, bkv, bkv_compute


def local_attention(q, k, v, *, impl: str, settings: Any, scale: float, is_causal: bool,
                    q_len: int, kv_len: int, q_offset: jax.Array | None, padded: bool,
                    blocks: tuple[int, int, int], mask=None, bias=None) -> jax.Array:
  """Attention of local queries `[b, t, n, h]` over local keys/values `[b, s, kv, h]`."""
  if impl == "splash":
    return _splash(q, k, v, settings=settings, scale=scale, is_causal=is_causal, q_len=q_len,
                   kv_len=kv_len, q_offset=q_offset, padded=padded, blocks=blocks)
  if impl == "cudnn":
    return _cudnn(q, k, v, scale=scale, is_causal=is_causal, kv_len=kv_len, q_offset=q_offset,
                  mask=mask, bias=bias)
  if impl == "xla":
    return _xla(q, k, v, scale=scale, is_causal=is_causal, kv_len=kv_len, q_offset=q_offset,
                mask=mask, bias=bias)
  raise ValueError(f"no per-device kernel for attention impl {impl!r}")


def _positions_mask(t: int, s: int, *, is_causal: bool, kv_len: int, q_offset) -> jax.Array:
  """[1, 1, t, s] True = attend: real keys only, and (causal) keys at or before the query."""
  k_pos = jnp.arange(s)
  allowed = jnp.broadcast_to(k_pos[None, :] < kv_len, (t, s))
  if is_causal:
    q_pos = (0 if q_offset is None else q_offset) + jnp.arange(t)
    allowed = allowed & (k_pos[None, :] <= q_pos[:, None])
  return allowed[None, None]


def _xla(q, k, v, *, scale, is_causal, kv_len, q_offset, mask, bias):
  s = k.shape[1]
  if kv_len < s or (is_causal and q_offset is not None):
    allowed = _positions_mask(q.shape[1], s, is_causal=is_causal, kv_len=kv_len, q_offset=q_offset)
    mask = allowed if mask is None else mask & allowed
    is_causal = False
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal,
                                      scale=scale, implementation="xla")


def _pad_last(x: jax.Array, size: int) -> jax.Array:
  extra = size - x.shape[-1]
  return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _cudnn(q, k, v, *, scale, is_causal, kv_len, q_offset, mask, bias):
  if is_causal and q_offset is not None:
    raise ValueError("cuDNN attention: causal attention with the sequence sharded over 'context' "
                     "is not supported; set mesh.context=1 or model.attention_impl='xla'")
  b, s, h = q.shape[0], k.shape[1], q.shape[-1]
  h_pad = round_up(h, CUDNN_HEAD_MULTIPLE)
  lengths = None if kv_len == s else jnp.full((b,), kv_len, jnp.int32)
  try:
    out = jax.nn.dot_product_attention(
        _pad_last(q, h_pad), _pad_last(k, h_pad), _pad_last(v, h_pad), bias=bias, mask=mask,
        is_causal=is_causal, scale=scale, key_value_seq_lengths=lengths, implementation="cudnn")
  except Exception as err:  # the cuDNN frontend names the rule it enforces
    raise ValueError(
        f"cuDNN attention cannot serve q={q.shape} k={k.shape} dtype={jnp.dtype(q.dtype).name} "
        f"(per device, head dim padded to {h_pad}): {type(err).__name__}: {err}. cuDNN flash "
        f"attention needs fp16/bf16 and a head dim of at most 128 (256 on Hopper); set "
        f"model.dtype=bfloat16, or model.attention_impl='chunked'") from err
  return out[..., :h]


def _splash(q, k, v, *, settings, scale, is_causal, q_len, kv_len, q_offset, padded, blocks):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  if is_causal and q_offset is not None:
    raise ValueError("splash attention: causal attention with the sequence sharded over "
                     "'context' is not supported; set mesh.context=1")
  b, t, n, h = q.shape
  s = k.shape[1]
  bq, bkv, bkv_compute = blocks
  if t % bq or s % bkv:
    raise ValueError(f"splash attention: {t} queries / {s} keys per device are not multiples of "
                     f"block_q={bq} / block_kv={bkv} (model.attention.block_q/block_kv)")
  h_pad = round_up(h, settings.splash_head_multiple) if settings.splash_head_multiple else h
  # splash takes [heads, tokens, head_dim] per example and applies no softmax scale itself.
  qh = _pad_last(q * jnp.asarray(scale, q.dtype), h_pad).transpose(0, 2, 1, 3)
  kh = _pad_last(k, h_pad).transpose(0, 2, 1, 3)
  vh = _pad_last(v, h_pad).transpose(0, 2, 1, 3)
  one = sm.CausalMask((t, s)) if is_causal else sm.FullMask((t, s))
  sizes = sk.BlockSizes(
      block_q=bq, block_kv=bkv, block_kv_compute=bkv_compute, block_q_dkv=bq, block_kv_dkv=bkv,
      block_kv_dkv_compute=bkv_compute, block_q_dq=None if settings.fused_bwd else bq,
      block_kv_dq=None if settings.fused_bwd else bkv, use_fused_bwd_kernel=settings.fused_bwd)
  kernel = sk.make_splash_mha(sm.MultiHeadMask([one] * n), head_shards=1, q_seq_shards=1,
                              block_sizes=sizes, interpret=settings.interpret,
                              residual_checkpoint_name=OUT_NAME)
  segments = None
  if padded:  # id 1 marks padding: real queries see only real keys
    q_pos = (0 if q_offset is None else q_offset) + jnp.arange(t)
    segments = sk.SegmentIds((q_pos >= q_len).astype(jnp.int32),
                             (jnp.arange(s) >= kv_len).astype(jnp.int32))
  out = jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=segments))(qh, kh, vh)
  return out.transpose(0, 2, 1, 3)[..., :h]


def lcm(a: int, b: int) -> int:
  return a * b // math.gcd(a, b)

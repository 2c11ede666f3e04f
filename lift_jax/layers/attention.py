"""The one attention function every model calls.

`attention(q, k, v, impl=...)` takes `[B, T, N, H]` queries and `[B, S, K, H]` keys/values (K divides
N: grouped-query attention needs no repeat by the caller) and returns `[B, T, N, H]`.

Implementations:
  xla     `jax.nn.dot_product_attention(implementation="xla")`; everywhere, the CPU default.
  cudnn   the cuDNN flash kernel through the same JAX call; GPU only, fp16/bf16 only.
  chunked XLA over blocks of queries, each block rematerialized in the backward pass: memory
          O(block·S) instead of O(T·S), on any backend (long video sequences without a fused
          kernel: CPU, fp32 on GPU, ahead-of-time memory planning).
  splash  Pallas splash attention; TPU only.
  auto    splash on TPU, cudnn on GPU for half-precision inputs, xla otherwise.
A requested kernel that cannot run here falls back to `xla` with a warning that says why, once per
reason, so one config serves CPU tests, GPU runs and TPU pods.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "chunked")
CHUNK = 512
_HALF = (jnp.bfloat16, jnp.float16)


@functools.cache
def _warn_once(message: str) -> None:
  warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_impl(impl: str, dtype) -> str:
  """Picks the kernel for this backend and dtype; explains and falls back when it cannot run."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
  backend = jax.default_backend()
  if impl == "auto":
    if backend == "tpu":
      return "splash"
    if backend == "gpu" and dtype in _HALF:
      return "cudnn"
    return "xla"
  if impl == "cudnn" and (backend != "gpu" or dtype not in _HALF):
    _warn_once(f"attention impl 'cudnn' needs a GPU and fp16/bf16 inputs (backend={backend}, "
               f"dtype={jnp.dtype(dtype).name}); using 'xla' instead")
    return "xla"
  if impl == "splash" and backend != "tpu":
    _warn_once(f"attention impl 'splash' needs a TPU (backend={backend}); using 'xla' instead")
    return "xla"
  return impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "auto",
              is_causal: bool = False, mask: jax.Array | None = None,
              bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
  """Softmax attention.

  `mask` is boolean, broadcastable to [B, N, T, S], True = attend; `bias` is added to the logits
  (T5's relative positions), broadcastable to [B, N, T, S]; `scale` defaults to 1/sqrt(H).
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention expects [B, T, N, H] inputs, got {q.shape}, {k.shape}, {v.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of kv heads ({k.shape[2]})")
  chosen = resolve_impl(impl, q.dtype)
  with jax.named_scope(f"attention_{chosen}"):
    if chosen == "splash":
      if mask is not None or bias is not None:
        _warn_once("attention impl 'splash' takes no explicit mask or bias here; using 'xla'")
      else:
        return _splash(q, k, v, is_causal=is_causal, scale=scale)
    if chosen == "chunked":
      if mask is None and bias is None and not is_causal:
        return _chunked(q, k, v, scale=scale)
      _warn_once("attention impl 'chunked' takes no mask, bias or causal flag; using 'xla'")
    if chosen == "cudnn":
      try:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal,
                                            scale=scale, implementation="cudnn")
      except Exception as err:  # the cuDNN path rejects some shapes at trace time
        _warn_once(f"attention impl 'cudnn' rejected shapes q={q.shape} k={k.shape} "
                   f"({type(err).__name__}: {err}); using 'xla' instead")
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal,
                                        scale=scale, implementation="xla")


def _chunked(q, k, v, *, scale: float | None, chunk: int = CHUNK) -> jax.Array:
  """Exact softmax attention one block of queries at a time (each block rematerialized)."""
  b, t, n, h = q.shape
  if t <= chunk:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")
  pad = -t % chunk
  blocks = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, -1, chunk, n, h)

  @jax.checkpoint
  def one(q_block):
    return jax.nn.dot_product_attention(q_block, k, v, scale=scale, implementation="xla")

  out = jax.lax.map(one, blocks.transpose(1, 0, 2, 3, 4))
  return out.transpose(1, 0, 2, 3, 4).reshape(b, t + pad, n, h)[:, :t]


def _splash(q, k, v, *, is_causal: bool, scale: float | None) -> jax.Array:
  """Pallas splash attention (TPU). Pads T and S to the block size and masks padded keys."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  block = 128
  t_pad, s_pad = -t % block, -s % block
  scale = h ** -0.5 if scale is None else scale
  # splash wants [N, T, H] per example; it applies no softmax scale itself.
  qh = jnp.pad(q * scale, ((0, 0), (0, t_pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  kh = jnp.pad(k, ((0, 0), (0, s_pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  vh = jnp.pad(v, ((0, 0), (0, s_pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  if kv_heads != n:
    kh = jnp.repeat(kh, n // kv_heads, axis=1)
    vh = jnp.repeat(vh, n // kv_heads, axis=1)
  shape = (t + t_pad, s + s_pad)
  one = sm.CausalMask(shape) if is_causal else sm.FullMask(shape)
  kernel = sk.make_splash_mha(sm.MultiHeadMask([one] * n), head_shards=1, q_seq_shards=1,
                              block_sizes=sk.BlockSizes.get_default())
  q_ids = jnp.broadcast_to((jnp.arange(shape[0]) >= t).astype(jnp.int32), (b, shape[0]))
  kv_ids = jnp.broadcast_to((jnp.arange(shape[1]) >= s).astype(jnp.int32), (b, shape[1]))
  out = jax.vmap(lambda q1, k1, v1, qi, ki: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(qi, ki)))(
      qh, kh, vh, q_ids, kv_ids)
  return out.transpose(0, 2, 1, 3)[:, :t]

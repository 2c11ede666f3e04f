"""The one attention function every model calls.

`attention(q, k, v, impl=...)` takes `[B, T, N, H]` queries and `[B, S, K, H]` keys/values (K divides
N: grouped-query attention needs no repeat by the caller) and returns `[B, T, N, H]`.

Implementations:
  xla     `jax.nn.dot_product_attention(implementation="xla")`; everywhere, the CPU default.
  cudnn   the cuDNN flash kernel through the same JAX call; GPU only, fp16/bf16 only.
  chunked XLA over blocks of queries, each block rematerialized in the backward pass: memory
          O(block·S) instead of O(T·S), on any backend (long video sequences without a fused
          kernel: CPU, fp32 on GPU, ahead-of-time memory planning).
  splash  Pallas splash attention; TPU only (or anywhere in Pallas interpret mode, for tests).
  auto    splash on TPU, cudnn on GPU for half-precision inputs, xla otherwise and for attention
          with an explicit mask or bias (the critic's LLM, T5: short sequences).

The fused kernels (and every kernel when the mesh shards the sequence over `context`) run inside
`shard_map` (`sharded_attention`), so they work on sharded meshes. On CPU a fused kernel that cannot
run here falls back to `xla` with a warning, once per reason, so one config serves CPU tests; on an
accelerator that is an error naming the setting to change, as is an XLA attention whose score
matrix would not fit (the path that needed 134 GiB for the full-size 2B step).

Inputs q/k/v and the output carry `checkpoint_name`s ("query_proj", "key_proj", "value_proj",
"attention_out") for the remat policies in `layers.remat`. Kernel block sizes and the like are
`AttentionSettings`, set with `configure(...)` or `with settings(...)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import warnings
from typing import Iterator

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from lift_jax.layers import sharded_attention
from lift_jax.layers.fused_attention import OUT_NAME, QKV_NAMES
from lift_jax.parallel import mesh as mesh_lib

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "chunked")
CHUNK = 512
_HALF = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class AttentionSettings:
  """Kernel knobs (config: `model.attention`). Block sizes are splash's, multiples of 128."""

  block_q: int = 512
  block_kv: int = 512
  block_kv_compute: int | None = None  # None: block_kv
  fused_bwd: bool = False  # splash's fused dK/dV/dQ backward kernel
  splash_head_multiple: int = 128  # zero-pad the head dim to this (0: no padding)
  interpret: bool = False  # run Pallas kernels in interpret mode on any backend (tests)
  xla_max_score_gib: float = 16.0  # on accelerators: larger XLA score matrices are an error


_SETTINGS: contextvars.ContextVar[AttentionSettings] = contextvars.ContextVar(
    "lift_jax_attention_settings", default=AttentionSettings())


def configure(**overrides) -> AttentionSettings:
  """Sets the process-wide attention settings (the tools call this from `model.attention`)."""
  value = dataclasses.replace(_SETTINGS.get(), **overrides)
  _SETTINGS.set(value)
  return value


@contextlib.contextmanager
def settings(**overrides) -> Iterator[AttentionSettings]:
  """Attention settings for the code traced inside the block."""
  token = _SETTINGS.set(dataclasses.replace(_SETTINGS.get(), **overrides))
  try:
    yield _SETTINGS.get()
  finally:
    _SETTINGS.reset(token)


def current_settings() -> AttentionSettings:
  return _SETTINGS.get()


@functools.cache
def _warn_once(message: str) -> None:
  warnings.warn(message, RuntimeWarning, stacklevel=3)


def _unavailable(message: str, backend: str) -> str:
  """On CPU: warn once and use xla. On an accelerator: a silent fallback could need 100+ GiB."""
  if backend in ("gpu", "tpu", "cuda", "rocm"):
    raise ValueError(message + "; set model.attention_impl to a kernel this device runs "
                     "('auto' picks one)")
  _warn_once(message + "; using 'xla' instead")
  return "xla"


def resolve_impl(impl: str, dtype) -> str:
  """Picks the kernel for this backend and dtype; explains what cannot run here."""
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
    return _unavailable(f"attention impl 'cudnn' needs a GPU and fp16/bf16 inputs "
                        f"(backend={backend}, dtype={jnp.dtype(dtype).name})", backend)
  if impl == "splash" and backend != "tpu" and not current_settings().interpret:
    return _unavailable(f"attention impl 'splash' needs a TPU (backend={backend})", backend)
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
  q, k, v = (checkpoint_name(x, name) for x, name in zip((q, k, v), QKV_NAMES))
  chosen = resolve_impl(impl, q.dtype)
  backend = jax.default_backend()
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  explicit = mask is not None or bias is not None
  if impl == "auto" and explicit:
    chosen = "xla"  # masked/biased attention (critic LLM, T5) is short: XLA, under the size check
  if chosen == "splash" and explicit:
    chosen = _unavailable("attention impl 'splash' takes no explicit mask or bias here", backend)
  if chosen == "chunked" and (explicit or is_causal):
    _warn_once("attention impl 'chunked' takes no mask, bias or causal flag; using 'xla'")
    chosen = "xla"
  # Under a context-sharded mesh XLA attention also runs per device (all-gathered keys/values).
  sharded = chosen in ("splash", "cudnn") or (
      chosen == "xla" and not explicit and sharded_attention.context_size() > 1)
  with jax.named_scope(f"attention_{chosen}"):
    if sharded:
      out = sharded_attention.attention(q, k, v, impl=chosen, settings=current_settings(),
                                        scale=scale, is_causal=is_causal, mask=mask, bias=bias)
    elif chosen == "chunked":
      out = _chunked(q, k, v, scale=scale)
    else:
      _check_xla_fits(q, k, backend)
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal,
                                         scale=scale, implementation="xla")
  return checkpoint_name(out, OUT_NAME)


def _check_xla_fits(q: jax.Array, k: jax.Array, backend: str) -> None:
  """On an accelerator, refuses an XLA attention whose fp32 score matrix would not fit a device."""
  if backend == "cpu":
    return
  b, t, n, _ = q.shape
  gib = b * n * t * k.shape[1] * 4 / 2**30
  active = mesh_lib.active_mesh()
  if active is not None:  # batch and heads are split over the mesh's data×fsdp and tensor axes
    gib /= max(1, math.gcd(b * n, active[0].size))
  limit = current_settings().xla_max_score_gib
  if gib > limit:
    raise ValueError(
        f"XLA attention for q={q.shape} k={k.shape} would materialize a ~{gib:.0f} GiB score "
        f"matrix per device (limit model.attention.xla_max_score_gib={limit}); use "
        f"model.attention_impl='auto' with model.dtype=bfloat16 (cuDNN/splash) or 'chunked'")


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

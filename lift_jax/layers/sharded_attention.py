"""Attention kernels inside `shard_map`, and context parallelism (the sequence split over devices).

XLA cannot partition a Pallas (Mosaic) kernel or a cuDNN custom call across devices on its own, so
under a mesh the per-device kernel runs inside `shard_map` with the layout the model already uses:
batch over the mesh axes of `activation_batch` (data×fsdp), heads over `activation_heads` (tensor),
tokens over `activation_length` (context). A batch axis the batch does not divide splits the heads
instead where they divide; what divides neither stays whole (computed redundantly). With context > 1
every device holds a slice of the queries and all-gathers the keys and values (exact attention;
the all-gather's gradient is a reduce-scatter), and tokens are padded to a multiple of the
context size (and the kernel blocks), the padded keys masked out and the padded query rows dropped.

Without a mesh (or on one device) the same padding and kernel run unwrapped.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lift_jax.layers import fused_attention as fused
from lift_jax.parallel import mesh as mesh_lib

_LOGICAL = ("activation_batch", "activation_length", "activation_heads", "activation_kv")


def context_size() -> int:
  """How many devices share one sequence under the current mesh (1 without a mesh)."""
  active = mesh_lib.active_mesh()
  if active is None:
    return 1
  mesh, rules = active
  return mesh_lib.axis_size(mesh, mesh_lib.logical_to_spec(_LOGICAL, rules)[1])


def attention(q, k, v, *, impl: str, settings: Any, scale: float, is_causal: bool,
              mask=None, bias=None) -> jax.Array:
  """`[B, T, N, H]` x `[B, S, K, H]` -> `[B, T, N, H]` with the kernel `impl` on every device."""
  active = mesh_lib.active_mesh()
  if active is not None and active[0].size == 1:
    active = None
  b, t, n, _ = q.shape
  s = k.shape[1]
  if active is None:
    batch_axes = length_axes = heads_axes = None
    context = 1
  else:
    mesh, rules = active
    batch_axes, length_axes, heads_axes, _ = mesh_lib.logical_to_spec(_LOGICAL, rules)
    batch_axes, heads_axes = _split_batch_and_heads(mesh, b, n, batch_axes, heads_axes)
    tensor = mesh_lib.axis_size(mesh, heads_axes)
    if k.shape[2] % tensor:  # fewer kv heads than tensor shards: give every query head its own
      k, v = (jnp.repeat(x, n // k.shape[2], axis=2) for x in (k, v))
    context = mesh_lib.axis_size(mesh, length_axes)

  blocks = fused.block_sizes(impl, -(-t // context), s, settings)
  t_pad = fused.round_up(t, context * blocks[0])
  s_pad = fused.round_up(s, fused.lcm(context, blocks[1]))
  padded = (t_pad, s_pad) != (t, s)
  if (mask is not None or bias is not None) and (padded or context > 1):
    raise ValueError(f"attention impl {impl!r}: an explicit mask/bias cannot be combined with "
                     f"context parallelism or kernel padding (q {q.shape}, k {k.shape}, "
                     f"context={context}); set mesh.context=1 or model.attention_impl='xla'")
  q = _pad_tokens(q, t_pad)
  k, v = _pad_tokens(k, s_pad), _pad_tokens(v, s_pad)
  local = functools.partial(fused.local_attention, impl=impl, settings=settings, scale=scale,
                            is_causal=is_causal, q_len=t, kv_len=s, padded=padded, blocks=blocks)
  extras = tuple(x for x in (mask, bias) if x is not None)

  def split_extras(rest):
    it = iter(rest)
    return (next(it) if mask is not None else None), (next(it) if bias is not None else None)

  if active is None:
    m, bi = split_extras(extras)
    out = local(q, k, v, q_offset=None, mask=m, bias=bi)
  else:
    tokens = P(batch_axes, length_axes, heads_axes, None)

    def body(q, k, v, *rest):
      q_offset = None
      if context > 1:
        k = jax.lax.all_gather(k, length_axes, axis=1, tiled=True)
        v = jax.lax.all_gather(v, length_axes, axis=1, tiled=True)
        q_offset = jax.lax.axis_index(length_axes) * q.shape[1]
      m, bi = split_extras(rest)
      return local(q, k, v, q_offset=q_offset, mask=m, bias=bi)

    extra_specs = tuple(_broadcast_spec(x, b, n, batch_axes, heads_axes) for x in extras)
    extras = tuple(x.reshape((1,) * (4 - x.ndim) + x.shape) for x in extras)
    out = jax.shard_map(body, mesh=active[0], in_specs=(tokens, tokens, tokens) + extra_specs,
                        out_specs=tokens, check_vma=False)(q, k, v, *extras)
  return out[:, :t]


def _names(entry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _entry(names: list[str]):
  return None if not names else names[0] if len(names) == 1 else tuple(names)


def _split_batch_and_heads(mesh, b: int, n: int, batch_axes, heads_axes):
  """Mesh axes for the batch and the heads. A batch axis the batch does not divide (batch 2 while
  sampling on fsdp=8) splits the heads instead if they divide, so devices do not all compute the
  same attention; heads the tensor axis does not divide (InternViT's 25) stay whole."""
  heads = list(_names(heads_axes))
  if n % mesh_lib.axis_size(mesh, _entry(heads)):
    heads = []
  batch = []
  for axis in _names(batch_axes):
    if b % mesh_lib.axis_size(mesh, _entry(batch + [axis])) == 0:
      batch.append(axis)
    elif n % mesh_lib.axis_size(mesh, _entry(heads + [axis])) == 0:
      heads.append(axis)
  return _entry(batch), _entry(heads)


def _pad_tokens(x: jax.Array, size: int) -> jax.Array:
  extra = size - x.shape[1]
  return x if extra == 0 else jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))


def _broadcast_spec(x: jax.Array, b: int, n: int, batch_axes, heads_axes) -> P:
  """A mask/bias `[B|1, N|1, T, S]` is split like the batch and heads it has, whole otherwise."""
  shape = (1,) * (4 - x.ndim) + x.shape
  return P(batch_axes if shape[0] == b and b > 1 else None,
           heads_axes if shape[1] == n and n > 1 else None, None, None)

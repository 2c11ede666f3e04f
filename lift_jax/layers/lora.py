"""LoRA on a frozen `Dense`: y = x·W + (α/r)·dropout(x)·A·B, and the merge W' = W + (α/r)·A·B.

`LoraDense` wraps a plain or a stacked (`[L, ...]`, inside `StackedBlocks`) `Dense`. The update
runs on activations, not on W: x·A is r columns wide, so no full-size weight or weight gradient is
ever formed. A `[L, in..., r]` and B `[L, r, out...]` (`LoraParam`, the only trainable variables)
carry the base kernel's logical axis names (in-axes on A, out-axes on B, rank unsharded), so they
shard with the same mesh rules as the weights they adapt. Init as PEFT: A ~ U(-1/√fan_in,
1/√fan_in) (kaiming_uniform with a=√5), B = 0, so training starts from the base model. Dropout (on
the LoRA input only, per target and layer) is on inside `dropout_key(key)` and off otherwise.
Used by the transformer LoRA and the critic LoRA (`lift/transformer_lora.py`, `lift/lora_adapters.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax.layers.linear import LETTERS, Dense

_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "lift_jax_lora_dropout_key", default=None)


class LoraParam(nnx.Param):
  """A LoRA factor: the trainable variables (the filter `nnx.split(model, LoraParam, ...)`)."""


class LoraIndex(nnx.Variable):
  """Each stacked layer's index (fixed), so dropout masks differ from layer to layer."""


@contextlib.contextmanager
def dropout_key(key: jax.Array | None) -> Iterator[None]:
  """Turns LoRA dropout on for the calls traced inside (None: off)."""
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


class LoraDense(nnx.Module):
  """A frozen `Dense` plus (α/r)·dropout(x)·A·B (around a stacked or a single Dense)."""

  def __init__(self, base: Dense, *, r: int, scale: float, dropout: float, salt: int,
               key: jax.Array, num_layers: int | None = None):
    self.base = base
    self.r, self.scale, self.dropout, self.salt = r, float(scale), float(dropout), int(salt)
    axes = tuple(base.kernel.get_metadata().get("out_sharding")
                 or (None,) * base.kernel[...].ndim)
    lead = () if num_layers is None else (num_layers,)
    n_in, n_out = len(base.in_shape), len(base.out_shape)
    if len(axes) != len(lead) + n_in + n_out:
      raise ValueError(f"kernel axes {axes} do not match in {base.in_shape} / out {base.out_shape}")
    lead_axes, in_axes, out_axes = axes[:len(lead)], axes[len(lead):len(lead) + n_in], axes[-n_out:]
    bound = 1.0 / math.sqrt(math.prod(base.in_shape))
    a = jax.random.uniform(key, lead + base.in_shape + (r,), jnp.float32, -bound, bound)
    self.lora_a = LoraParam(a, out_sharding=lead_axes + in_axes + (None,), eager_sharding=False)
    self.lora_b = LoraParam(jnp.zeros(lead + (r,) + base.out_shape, jnp.float32),
                            out_sharding=lead_axes + (None,) + out_axes, eager_sharding=False)
    self.layer_index = LoraIndex(jnp.arange(num_layers, dtype=jnp.int32) if num_layers else
                                 jnp.zeros((), jnp.int32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    dtype = self.base.dtype
    h = x.astype(dtype)
    key = _DROPOUT_KEY.get()
    if key is not None and self.dropout > 0:
      k = jax.random.fold_in(jax.random.fold_in(key, self.layer_index[...]), self.salt)
      keep = jax.random.bernoulli(k, 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(dtype)
    n_in, n_out = len(self.base.in_shape), len(self.base.out_shape)
    contract = LETTERS[h.ndim - n_in:h.ndim]
    out = LETTERS[h.ndim:h.ndim + n_out]
    with jax.named_scope("lora"):
      hr = jnp.einsum(f"...{contract},{contract}z->...z", h, self.lora_a[...].astype(dtype))
      d = jnp.einsum(f"...z,z{out}->...{out}", hr, self.lora_b[...].astype(dtype))
    return y + (self.scale * d).astype(y.dtype)


def merge(module: LoraDense) -> Dense:
  """The base `Dense` with W + (α/r)·A·B folded into its kernel (computed in fp32, stored in the
  kernel's dtype), in place; put it back where the `LoraDense` was."""
  base = module.base
  n_in = len(base.in_shape)
  a, b = module.lora_a[...], module.lora_b[...]
  lead = a.shape[:a.ndim - n_in - 1]
  a2 = a.reshape(lead + (-1, module.r)).astype(jnp.float32)
  b2 = b.reshape(lead + (module.r, -1)).astype(jnp.float32)
  delta = jnp.einsum("...ir,...ro->...io", a2, b2) * module.scale
  w = base.kernel[...]
  base.kernel[...] = (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)
  return base

"""Two-layer feed-forward blocks: plain (GELU-tanh, GELU, SiLU) and gated (SwiGLU, gated GELU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax.layers.linear import Dense

ACTIVATIONS = {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class Mlp(nnx.Module):
  """down(act(up(x))), or down(act(gate(x)) · up(x)) when `gated`."""

  def __init__(self, dim: int, hidden: int, *, act: str = "gelu_tanh", gated: bool = False,
               use_bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = activation(act)
    self.gate = Dense(dim, hidden, axes=("embed", "mlp"), **kw) if gated else None
    self.up = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
    self.down = Dense(hidden, dim, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.gate is not None:
      h = self.act(self.gate(x)) * self.up(x)
    else:
      h = self.act(self.up(x))
    return self.down(h)

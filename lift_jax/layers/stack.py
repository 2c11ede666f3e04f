"""A stack of identical blocks, created with `nnx.vmap` and run with `lax.scan`.

Compile time stays flat in depth, every stacked parameter gets a leading `layers` axis (logical name
`layers`), and rematerialization is one switch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from lift_jax.layers.remat import REMAT_POLICIES


class StackedBlocks(nnx.Module):
  """`num_layers` copies of `make_block(rngs)`; `__call__(carry, *shared)` threads carry through all.

  Each block is called as `block(carry, *shared) -> carry`; `shared` (time embedding, RoPE tables,
  masks) is the same for every layer.
  """

  def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *,
               remat: str = "none", rngs: nnx.Rngs):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    self.num_layers = num_layers
    self.remat = remat

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=num_layers,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs):
      return make_block(layer_rngs)

    self.layers = create(rngs)

  def __call__(self, carry: Any, *shared: Any) -> Any:
    graphdef, state = nnx.split(self.layers)

    def body(c, layer_state):
      return nnx.merge(graphdef, layer_state)(c, *shared), None

    if self.remat != "none":
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    carry, _ = jax.lax.scan(body, carry, state)
    return carry

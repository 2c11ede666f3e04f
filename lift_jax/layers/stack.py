"""A stack of identical blocks, created with `nnx.vmap` and run with `lax.scan`.

Compile time stays flat in depth, every stacked parameter gets a leading `layers` axis (logical name
`layers`), and rematerialization is one switch. `scan` is the one loop over the layers: it also
serves blocks that take per-layer inputs or give per-layer outputs (a KV cache) and runs only the
first layers of the stack when asked (a tower's penultimate features).

On CPU with several processes the loop is unrolled (`unroll`): XLA:CPU orders a program's
collectives only by when they start, so a while loop holding collectives (gloo between the
processes) can still be running its iterations' collectives when a later, independent collective of
the same program starts, at a different point on each host; the hosts then exchange mismatched
messages (gloo aborts on the size, or same-size data lands in the wrong buffer). Unrolled, every
collective is a plain instruction of the program and starts in the same order everywhere.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax.layers.remat import REMAT_POLICIES


def unroll(length: int) -> int:
  """`lax.scan`'s `unroll` for a loop that may hold cross-process collectives: the whole length
  on CPU with several processes (see the module doc), else 1 (one compiled body, flat compile)."""
  return max(length, 1) if jax.process_count() > 1 and jax.default_backend() == "cpu" else 1


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

  def scan(self, body: Callable, carry: Any, xs: Any = None, *,
           depth: int | None = None) -> tuple[Any, Any]:
    """`body(block, carry, x, i) -> (carry, y)` over the layers; returns the carry and stacked ys.

    `xs` (leading axis = depth) gives each layer its own input, `i` is the layer index. With
    `depth` < num_layers only the first `depth` blocks run; they are picked by index inside the
    loop, so no partial copy of the stacked weights is made.
    """
    n = self.num_layers if depth is None else depth
    if not 0 <= n <= self.num_layers:
      raise ValueError(f"depth={depth}: the stack has {self.num_layers} layers")
    if n == 0:
      return carry, None
    graphdef, state = nnx.split(self.layers)
    whole = n == self.num_layers

    def step(c, inputs):
      layer_state, i, x = inputs
      if not whole:
        layer_state = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False),
                                   state)
      return body(nnx.merge(graphdef, layer_state), c, x, i)

    if self.remat != "none":
      step = jax.checkpoint(step, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    return jax.lax.scan(step, carry, (state if whole else None, jnp.arange(n, dtype=jnp.int32), xs),
                        unroll=unroll(n))

  def depth_of(self, layer: int) -> int:
    """How many blocks give transformers' `hidden_states[layer]` (0: the input, -1: the output)."""
    n = self.num_layers
    if not -(n + 1) <= layer <= n:
      raise ValueError(f"layer={layer}: this stack has hidden states 0..{n} (or -{n + 1}..-1)")
    return layer % (n + 1)

  def __call__(self, carry: Any, *shared: Any, depth: int | None = None) -> Any:
    """Every block (or the first `depth`) applied in turn: `carry = block(carry, *shared)`."""
    carry, _ = self.scan(lambda block, c, x, i: (block(c, *shared), None), carry, depth=depth)
    return carry

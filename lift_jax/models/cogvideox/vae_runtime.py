"""The chunked and tiled runtime of the CogVideoX VAE (the modules are in `vae.py`).

Numerics follow diffusers exactly, including what makes the output depend on how it is computed:
videos are encoded in frame chunks of 9, 8, 8, ... (latents decoded in chunks of 3, 2, 2, ...), each
chunk normalized with its own GroupNorm statistics, and the causal convolutions carry the last two
frames of every layer's input from one chunk to the next (the conv cache). Spatial tiling
reproduces diffusers' tiles, overlaps and linear blending.

Two ways to run, one chunk function:
- Eagerly, the chunks are looped over in Python and each runs through one jitted chunk program
  (`run_chunk`: the weights are its arguments, never baked-in constants). Programs depend only on
  the chunk shape, so every 8k+1-frame video shares the same two encoder programs (9 and 8 frames),
  every tile of one shape shares its programs, and only one chunk's activations are alive at a time.
- Under `jax.jit`/`nnx.jit` (`is_traced`: inputs or weights are tracers), one program: the first
  chunk (longer) runs alone and supplies the conv cache that `lax.scan` carries through the remaining
  equal-size chunks, so the program holds two chunk bodies whatever the length; tiles of one shape
  run under `lax.map`. This is the form to AOT-compile (see bench/bench_vae_memory.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def chunk_bounds(num_frames: int, frames_per_chunk: int) -> list[tuple[int, int]]:
  """diffusers' frame batching: chunk 0 holds `n + F % n` frames (all F when F < 2n), then n each."""
  n = frames_per_chunk
  num_chunks = max(num_frames // n, 1)
  first = min(n + num_frames % n, num_frames)
  return [(0, first)] + [(first + k * n, first + (k + 1) * n) for k in range(num_chunks - 1)]


def run_in_chunks(fn: Callable, x_BTHWC: jax.Array, frames_per_chunk: int, *,
                  scan: bool = True) -> jax.Array:
  """Runs `fn(chunk, cache) -> (out, cache)` over diffusers' frame chunks, carrying the conv cache.

  `scan=True` (traced use): chunk 0 differs in length, so it runs alone and supplies the cache that
  `lax.scan` carries through the equal-size rest. `scan=False` (eager use): a Python loop, so that a
  jitted `fn` is compiled once per chunk shape and reused across videos.
  """
  bounds = chunk_bounds(x_BTHWC.shape[1], frames_per_chunk)
  if not scan:
    ys, cache = [], None
    for start, end in bounds:
      y, cache = fn(x_BTHWC[:, start:end], cache)
      ys.append(y)
    return jnp.concatenate(ys, axis=1) if len(ys) > 1 else ys[0]
  b, first = x_BTHWC.shape[0], bounds[0][1]
  y0, cache = fn(x_BTHWC[:, :first], None)
  if len(bounds) == 1:
    return y0
  rest = x_BTHWC[:, first:].reshape(b, len(bounds) - 1, frames_per_chunk, *x_BTHWC.shape[2:])

  def body(carry, chunk):
    y, carry = fn(chunk, carry)
    return carry, y

  _, ys = jax.lax.scan(body, cache, rest.swapaxes(0, 1))
  ys = ys.swapaxes(0, 1).reshape(b, -1, *ys.shape[3:])
  return jnp.concatenate([y0, ys.astype(y0.dtype)], axis=1)


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
  """diffusers' blend_v / blend_h: b's first rows fade in from a's last rows (linear weights)."""
  e = min(a.shape[axis], b.shape[axis], extent)
  if e <= 0:
    return b
  shape = [1] * b.ndim
  shape[axis] = e
  y = np.arange(e) / e  # float64 weights rounded once, as torch scales by Python floats
  w_a, w_b = ((1 - y).astype(np.float32).reshape(shape), y.astype(np.float32).reshape(shape))
  a_tail = jax.lax.slice_in_dim(a, a.shape[axis] - e, a.shape[axis], axis=axis)
  b_head = jax.lax.slice_in_dim(b, 0, e, axis=axis)
  mixed = a_tail * w_a + b_head * w_b
  return jnp.concatenate([mixed, jax.lax.slice_in_dim(b, e, b.shape[axis], axis=axis)], axis=axis)


def run_in_tiles(fn: Callable, x_BTHWC: jax.Array, tile: tuple[int, int], step: tuple[int, int],
                 blend: tuple[int, int], keep: tuple[int, int], *, stack: bool = True) -> jax.Array:
  """diffusers' tiled_encode / tiled_decode: overlapping (H, W) tiles, each run through `fn`
  (all frames, chunked), blended with the tile above and to the left, cropped to `keep`, stitched.

  Blending follows diffusers' in-place updates: a tile blends with its neighbours *after* they were
  blended themselves. With `stack` (traced use) tiles of one shape are stacked and run by `lax.map`
  (one compiled body, one tile's activations at a time); otherwise one call per tile.
  """
  h, w = x_BTHWC.shape[2:4]
  rows, cols = range(0, h, step[0]), range(0, w, step[1])
  tiles = {(r, c): x_BTHWC[:, :, i:i + tile[0], j:j + tile[1]]
           for r, i in enumerate(rows) for c, j in enumerate(cols)}
  groups: dict[tuple[int, ...], list] = {}
  for key, t in tiles.items():
    groups.setdefault(t.shape, []).append(key)
  out = {}
  for keys in groups.values():
    if len(keys) == 1 or not stack:
      out.update({k: fn(tiles[k]) for k in keys})
      continue
    ys = jax.lax.map(fn, jnp.stack([tiles[k] for k in keys]))
    out.update({k: ys[n] for n, k in enumerate(keys)})
  grid = [[out[(r, c)] for c in range(len(cols))] for r in range(len(rows))]
  # Eagerly, one compiled stitch instead of dozens of small per-op programs.
  return (_stitch if stack else _stitch_jit)(grid, blend, keep)


def _stitch(grid: list[list[jax.Array]], blend: tuple[int, int], keep: tuple[int, int]):
  """Blends each tile with its (already blended) upper and left neighbours, crops, concatenates."""
  grid = [[t.astype(jnp.float32) for t in row] for row in grid]
  result_rows = []
  for r, row in enumerate(grid):
    kept = []
    for c in range(len(row)):
      t = grid[r][c]
      if r > 0:
        t = _blend(grid[r - 1][c], t, blend[0], axis=2)
      if c > 0:
        t = _blend(grid[r][c - 1], t, blend[1], axis=3)
      grid[r][c] = t
      kept.append(t[:, :, :keep[0], :keep[1]])
    result_rows.append(jnp.concatenate(kept, axis=3))
  return jnp.concatenate(result_rows, axis=2)


_stitch_jit = jax.jit(_stitch, static_argnums=(1, 2))


def is_traced(module: nnx.Module, x) -> bool:
  """True under jax.jit / nnx.jit (the input or the weights are tracers): build one program."""
  leaves = jax.tree.leaves((nnx.state(module), x))
  return any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


@functools.partial(jax.jit, static_argnums=0)
def run_chunk(graphdef, state, chunk, cache):
  """One chunk through the encoder or decoder (`graphdef` picks which): the eager path's program."""
  return nnx.merge(graphdef, state)(chunk, cache)

"""A "readable" SigLIP tower for the demo's critic: every patch token carries the patch's colour.

A random tiny tower turns the demo's coloured blocks into tokens whose colour is buried under
random mixing, and the critic's LoRA (on the LLM only; tower and projector stay frozen, as in
LiFT) cannot learn the rater from a few hundred ratings (bench/RESULTS.md, the demo's world).
A pretrained tower sees colour; `make_readable` is the demo's stand-in for one: it sets the
weights of a `SiglipVisionModel` (same architecture, same files, same loaders) so that the
features VILA takes (`hidden_states[mm_vision_select_layer]`, before `post_layernorm`) are

  dims 0-2   `gain` x the patch's mean (R, G, B), pixels as the processor gives them ([-1, 1]);
  dims 3, 4  +`level`, -`level` (a constant pair),
  the rest   0,

the same at every position. How, in the upstream layers: the patch embedding averages each
channel of its 14x14 patch into dims 0-2 and its bias writes the constant pair; the position
embeddings are 0; every encoder layer's residual branches end in zeros (attention `out_proj` and
`fc2`), so each layer passes its input through; `post_layernorm` is left as it is (VILA reads
the layer before it).

Why the constant pair: the critic's `mlp_downsample` projector starts with a LayerNorm over the
four merged patches' features, and the LLM an RMSNorm per token; both divide by the token's own
spread. Without a constant the spread would be the colour's, and a dim and a bright grey would
come out alike. With it they differ, and brightness and its change from frame to frame survive;
the larger `level` is against `gain` x the colours, the more linear the norms leave them (the
demo's gain 4, level 1 is not linear, and measured as good as gain 4, level 4: bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from lift_jax.models.siglip import SiglipVisionModel

COLOURS = 3  # R, G, B


def _set(param, value) -> None:
  param[...] = jnp.asarray(value, param[...].dtype)


def _zero(param) -> None:
  _set(param, np.zeros(param[...].shape, np.float32))


def make_readable(tower: SiglipVisionModel, gain: float = 4.0,
                  level: float = 1.0) -> SiglipVisionModel:
  """Sets `tower`'s weights in place as the module doc says; returns it."""
  cfg = tower.config
  if cfg.hidden_size < COLOURS + 2 or cfg.num_channels != COLOURS:
    raise ValueError(f"a readable tower needs >= {COLOURS + 2} features of a {COLOURS}-channel "
                     f"picture, got hidden_size={cfg.hidden_size}, "
                     f"num_channels={cfg.num_channels}")
  if gain <= 0 or level < 0:
    raise ValueError(f"gain={gain} must be > 0 and level={level} >= 0")
  p = cfg.patch_size
  kernel = np.zeros(tower.patch_embedding.kernel[...].shape, np.float32)  # [C, p, p, D]
  for c in range(COLOURS):
    kernel[c, :, :, c] = gain / (p * p)
  bias = np.zeros(cfg.hidden_size, np.float32)
  bias[COLOURS], bias[COLOURS + 1] = level, -level
  _set(tower.patch_embedding.kernel, kernel)
  _set(tower.patch_embedding.bias, bias)
  _zero(tower.position_embedding)
  layer = tower.blocks.layers
  for dense in (layer.attn.o, layer.mlp.down):  # stacked over layers: every layer at once
    _zero(dense.kernel)
    _zero(dense.bias)
  return tower

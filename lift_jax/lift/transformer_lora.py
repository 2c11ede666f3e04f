"""LoRA fine-tuning of the CogVideoX transformer (the `trainable="lora"` option of the trainer).

The attention projections of every block (to_q, to_k, to_v, to_out: the targets of diffusers'
CogVideoX LoRA trainer) get stacked factors through the shared `layers.LoraDense` (also the
critic's SFT LoRA): y = x·W + (α/r)·x·A·B with W frozen, A `[L, in..., r]`, B `[L, r, out...]`,
B = 0 at the start. `merge_lora` folds W + (α/r)·A·B back into plain Dense layers, so the
fine-tuned model saves, exports and samples like any other.
"""

from __future__ import annotations

import jax
from flax import nnx

from lift_jax import layers
from lift_jax.layers.lora import LoraDense, LoraParam, merge

TARGETS = ("to_q", "to_k", "to_v", "to_out")


def add_lora(model: nnx.Module, *, rank: int = 64, alpha: float = 64.0, seed: int = 0,
             targets=TARGETS) -> nnx.Module:
  """Wraps the blocks' attention projections with LoRA factors, in place; returns the model."""
  attn = model.blocks.layers.attn1
  key = jax.random.key(seed)
  for i, name in enumerate(targets):
    base = getattr(attn, name)
    if not isinstance(base, layers.Dense):
      raise ValueError(f"attn1.{name} is {type(base).__name__}, not a Dense (LoRA twice?)")
    setattr(attn, name, LoraDense(base, r=rank, scale=alpha / rank, dropout=0.0, salt=i,
                                  key=jax.random.fold_in(key, i),
                                  num_layers=model.config.num_layers))
  return model


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Replaces each LoraDense by its Dense with W + (α/r)·A·B, in place; returns the model."""
  attn = model.blocks.layers.attn1
  for name in TARGETS:
    mod = getattr(attn, name)
    if isinstance(mod, LoraDense):
      setattr(attn, name, merge(mod))
  return model


def trainable_filter():
  return LoraParam

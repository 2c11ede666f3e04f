"""Rematerialization policies by name: what a remat'd block keeps for the backward pass.

  none           no remat: every activation is kept (fastest, most memory)
  full           keep nothing but the block's input: the whole block is recomputed
  dots           keep matmul outputs without batch dims (the projections and MLP): the
                 elementwise work and attention are recomputed
  attention      keep the attention output ("attention_out"; with splash also its logsumexp):
                 the output projection's backward needs no recompute, and splash's backward no
                 forward kernel (attention is ~60% of the 2B forward FLOPs at 17,776 tokens).
                 XLA attention still recomputes its softmax for its own backward.
  qkv            keep the attention inputs after projection/norm/RoPE ("query_proj", "key_proj",
                 "value_proj"): the projections are not recomputed
  qkv_attention  keep both
  dots_attention `dots` plus the attention output

The names are set with `jax.ad_checkpoint.checkpoint_name` in `layers.attention`, so every model
that calls it gets them.
"""

from __future__ import annotations

import jax

from lift_jax.layers.fused_attention import OUT_NAME, QKV_NAMES

_names = jax.checkpoint_policies.save_only_these_names
_dots = jax.checkpoint_policies.dots_with_no_batch_dims_saveable

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": _dots,
    "attention": _names(OUT_NAME),
    "qkv": _names(*QKV_NAMES),
    "qkv_attention": _names(*QKV_NAMES, OUT_NAME),
    "dots_attention": jax.checkpoint_policies.save_from_both_policies(_dots, _names(OUT_NAME)),
}


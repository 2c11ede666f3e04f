"""Shared building blocks: written once, used by every model in `lift_jax.models`."""

from lift_jax.layers.attention import IMPLEMENTATIONS, AttentionSettings, attention, resolve_impl
from lift_jax.layers.attention import configure as configure_attention
from lift_jax.layers.attention import settings as attention_settings
from lift_jax.layers.embeddings import (apply_rope_half, apply_rope_interleaved, rope_1d,
                                        rope_3d_tables, sincos_1d, sincos_3d_table,
                                        timestep_embedding)
from lift_jax.layers.linear import Dense, param, torch_linear_init
from lift_jax.layers.lora import LoraDense, LoraParam
from lift_jax.layers.mlp import ACTIVATIONS, Mlp, activation
from lift_jax.layers.norms import LayerNorm, RMSNorm, layer_norm, modulate
from lift_jax.layers.patches import PatchGeometry, patch_projection, patchify
from lift_jax.layers.stack import StackedBlocks
from lift_jax.layers.settings import (RUNTIME_FIELDS, DtypeSettings, RuntimeSettings,
                                      config_fields, square)

"""CogVideoX: the diffusion transformer (and, with `vae`, the 3D causal VAE)."""

from lift_jax.models.cogvideox.loading import (export_diffusers, load_transformer,
                                               save_transformer, transformer_config)
from lift_jax.models.cogvideox.modeling import (CogVideoXConfig, CogVideoXTransformer3D,
                                                rope_tables, sincos_table)

"""CogVideoX: the diffusion transformer (and, with `vae`, the 3D causal VAE)."""

from lift_jax.models.cogvideox.loading import (export_diffusers, load_transformer,
                                               save_transformer, transformer_config)
from lift_jax.models.cogvideox.modeling import (CogVideoXConfig, CogVideoXTransformer3D,
                                                rope_tables, sincos_table)
from lift_jax.models.cogvideox.vae import (AutoencoderKLCogVideoX, CogVideoXVAEConfig,
                                           sample_latents)
from lift_jax.models.cogvideox.vae_params import load_vae, save_vae, vae_config

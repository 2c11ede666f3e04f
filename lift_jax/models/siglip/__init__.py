"""SigLIP vision tower (the 13B LiFT-Critic's image encoder) and its image preprocessing."""

from lift_jax.models.siglip.modeling import SiglipVisionConfig, SiglipVisionModel
from lift_jax.models.siglip.params import KIND, load, save, vision_config, vision_rules
from lift_jax.models.siglip.processing import ImageProcessor

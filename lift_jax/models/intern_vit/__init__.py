"""InternViT vision tower (the 40B LiFT-Critic's image encoder, InternViT-6B-448px-V1-2)."""

from lift_jax.models.intern_vit import params
from lift_jax.models.intern_vit.modeling import (HEADS_AXIS, InternVisionConfig, InternVisionModel,
                                                 bicubic_matrix)
from lift_jax.models.intern_vit.params import (IMAGENET_MEAN, IMAGENET_STD, KIND, image_processor,
                                               load, save, vision_config, vision_rules)

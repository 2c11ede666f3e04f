"""LiFT-Critic: VILA-1.5 (vision tower + mlp_downsample projector + Llama) with a merged LoRA,
its prompts, and the host-side `Critic` that scoring calls (see `vila.py`)."""

from lift_jax.models.critic import prompts
from lift_jax.models.critic.lora import LoraAdapter, LoraMergedWeights
from lift_jax.models.critic.prompts import (HERMES_2, QUESTION_KEYS, QUESTIONS, TEMPLATES, VICUNA_V1,
                                            build_prompt, label_token_ids, tokenize_prompt)
from lift_jax.models.critic.vila import (KIND, LIFT_SAMPLING, Critic, MlpDownsampleProjector,
                                         PromptBatch, VilaConfig, VilaCritic, build_batch,
                                         downsample_2x2, load_critic, load_tokenizer,
                                         sample_frame_indices, sample_frames, save_critic,
                                         vila_config)

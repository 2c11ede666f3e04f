"""LiFT-Critic: VILA-1.5 (vision tower + mlp_downsample projector + Llama) with a merged LoRA
(`modeling.py`, loaded by `params.py`), its prompts, and the host-side `Critic` that scoring calls
(`host.py`)."""

from lift_jax.models.critic import prompts
from lift_jax.models.critic.host import (LIFT_SAMPLING, Critic, PromptBatch, build_batch,
                                         sample_frame_indices, sample_frames)
from lift_jax.models.critic.lora import LoraAdapter, LoraMergedWeights
from lift_jax.models.critic.modeling import (MlpDownsampleProjector, VilaConfig, VilaCritic,
                                             downsample_2x2)
from lift_jax.models.critic.params import (KIND, load_critic, load_tokenizer, save_critic,
                                           vila_config)
from lift_jax.models.critic.prompts import (HERMES_2, QUESTION_KEYS, QUESTIONS, TEMPLATES, VICUNA_V1,
                                            build_prompt, label_token_ids, tokenize_prompt)

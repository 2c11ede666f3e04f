"""T5 encoder (the CogVideoX text encoder) and the prompt tokenizer that feeds it."""

from lift_jax.models.t5.modeling import T5Config, T5Encoder, relative_position_buckets
from lift_jax.models.t5.params import encoder_config, encoder_rules, load_encoder, save_encoder
from lift_jax.models.t5.tokenizer import CogVideoXTokenizer, load_tokenizer

"""The CPU demo: tiny random CogVideoX-style models, created locally in the upstream layouts.

  python tools/demo.py --config=configs/demo.py --workdir /tmp/lift_demo
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A 5B-style transformer (3D RoPE) small enough for 2 CPU cores; diffusers config field names.
  c.transformer = ml_collections.ConfigDict(dict(
      num_attention_heads=4, attention_head_dim=16, num_layers=4, in_channels=16, out_channels=16,
      time_embed_dim=64, text_embed_dim=64, max_text_seq_length=32, sample_height=16,
      sample_width=24, sample_frames=9, use_rotary_positional_embeddings=True))
  c.batch = 2
  c.latent_frames = 3
  c.latent_height = 16
  c.latent_width = 24
  c.dtype = "float32"
  # Mesh over whatever devices exist: everything on fsdp.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))
  c.compilation_cache = ml_collections.config_dict.placeholder(str)
  return c

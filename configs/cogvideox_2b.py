"""Text-to-video with CogVideoX-2B, as LiFT generates its synthetic videos (CogVideo's cli_demo).

  python tools/generate.py --config=configs/cogvideox_2b.py --prompts prompts.txt --out work \
      --model ckpt/CogVideoX-2b [--config.batch_size=8] [--config.num_videos_per_prompt=4]

cli_demo: CogVideoXDPMScheduler (trailing), 50 steps, guidance 6, use_dynamic_cfg=True, 49 frames
at 480x720, exported at 8 fps, seed 42. The 2B model card's plain call uses DDIM without dynamic
CFG instead: --config.sampling.sampler=ddim --config.sampling.use_dynamic_cfg=False.
Model paths: a diffusers pipeline root (model.root or --model) and/or per-component diffusers
folders or converted checkpoints (tools/convert_checkpoint.py); model.schedule is used only when
there is no scheduler/scheduler_config.json.
"""

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42  # video k (prompt i, copy j: k = i * num_videos_per_prompt + j) uses seed + k
  c.model = ml_collections.ConfigDict(dict(
      root=placeholder(str),  # e.g. ckpt/CogVideoX-2b (transformer/, vae/, text_encoder/, ...)
      transformer=placeholder(str), vae=placeholder(str), text_encoder=placeholder(str),
      tokenizer=placeholder(str), scheduler=placeholder(str),  # each overrides root's
      schedule="2b",  # SNR shift 3.0, used without a scheduler_config.json
      # Compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU. The 2B weights are fp16 and
      # the official demo runs 2B in fp16; bf16 is the accelerator-friendly choice here.
      dtype="auto", param_dtype=placeholder(str), vae_dtype=placeholder(str),
      text_encoder_dtype=placeholder(str), attention_impl="auto"))
  c.sampling = ml_collections.ConfigDict(dict(
      sampler="dpm", num_steps=50, guidance_scale=6.0, use_dynamic_cfg=True, negative_prompt="",
      max_sequence_length=226))  # T5 tokens a prompt (diffusers' max_sequence_length)
  c.video = ml_collections.ConfigDict(dict(num_frames=49, height=480, width=720, fps=8))
  c.num_videos_per_prompt = 1
  c.batch_size = placeholder(int)  # videos per sampler call; default: the mesh's data x fsdp
  # The official demo decodes with VAE tiling and slicing (one video at a time).
  c.vae = ml_collections.ConfigDict(dict(tiling=True, batch_size=placeholder(int)))
  # Inference is data parallel: every device holds the (replicated) weights and its own prompts.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
  c.compilation_cache = placeholder(str)
  return c

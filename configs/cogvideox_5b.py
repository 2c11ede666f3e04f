"""Text-to-video with CogVideoX-5B (and, with the overrides below, CogVideoX 1.5-5B).

  python tools/generate.py --config=configs/cogvideox_5b.py --prompts prompts.txt --out work \
      --model ckpt/CogVideoX-5b

cli_demo settings: CogVideoXDPMScheduler (trailing), 50 steps, guidance 6, use_dynamic_cfg=True,
49 frames at 480x720, 8 fps, bf16 (the 5B weights are bf16). RoPE comes from the transformer's
config; the schedule has no SNR shift. CogVideoX 1.5: --config.video.num_frames=81
--config.video.height=768 --config.video.width=1360 --config.video.fps=16 (latent frames are
padded to a multiple of patch_size_t, as its pipeline does).
"""

from configs import cogvideox_2b


def get_config():
  c = cogvideox_2b.get_config()
  c.model.schedule = "5b"  # SNR shift 1.0, used without a scheduler_config.json
  c.model.dtype = "auto"  # bfloat16 on GPU/TPU (the weights' own dtype), float32 on CPU
  return c

"""Scoring with LiFT-Critic-40B (VILA1.5-40b + LoRA, hermes-2), as LiFT's run_critic_40b.py does.

  python tools/score.py --config=configs/critic_40b.py --manifest work/videos/manifest.jsonl \
      --out work/scores.jsonl --critic ckpt/VILA1.5-40b --lora ckpt/LiFT-Critic-40b-lora-v1.5

The same scoring as configs/critic_13b.py with the ChatML (hermes-2) template; the vision tower
is InternViT-6B (lift_jax/models/intern_vit), chosen from the folder's vision_tower/config.json.
"""

from configs import critic_13b


def get_config():
  c = critic_13b.get_config()
  c.critic.template = "hermes-2"
  c.lift_output = "critic_output_40b.json"
  c.batch_videos = 2
  return c

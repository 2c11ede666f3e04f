"""LiFT-Critic-40B SFT: LoRA on VILA1.5-40b's LLM (Yi-34B, hermes-2) with LiFT-HRA (+VIDGEN).

  python tools/train_critic.py --config=configs/critic_40b_sft.py --workdir runs/critic_40b \
      --config.critic.path=ckpt/VILA1.5-40b --config.data.dir=work/hra_448 \
      --config.data.manual_dir=data/LiFT

As configs/critic_13b_sft.py with train_critic_40b.sh's settings: LoRA r 64 / alpha 128, the
hermes-2 template, InternViT-6B frames at 448 (so its own HRA build), 8 per device x 8 GPUs = 64
a step, 20 epochs. Needs the InternViT tower (lift_jax.models.intern_vit) to load the critic.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "critic_13b_sft", os.path.join(os.path.dirname(os.path.abspath(__file__)), "critic_13b_sft.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
  c = _base.get_config()
  c.critic.template = "hermes-2"
  c.lora.r, c.lora.alpha = 64, 128.0
  c.data.batch_size = 64
  c.num_epochs = 20
  return c

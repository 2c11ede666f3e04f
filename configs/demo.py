"""The CPU demo of the whole LiFT loop: tiny random models created locally, a few prompts.

  python tools/lift.py --config=configs/demo.py --workdir /tmp/lift_demo

The models (a CogVideoX-5B-style pipeline: transformer, VAE, T5, tokenizer, scheduler; and a
VILA-1.5-13B-style critic) are written in their upstream PyTorch layouts under WORKDIR/assets and
loaded through the converters, so the demo exercises the real loading path. Their weights are
random: the rewards and videos mean nothing, the mechanics are what is shown.
"""

import os

import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.rounds = 1
  c.prompts = os.path.join(HERE, "prompts", "demo_train.txt")
  c.eval_prompts = os.path.join(HERE, "prompts", "demo_eval.txt")
  c.demo_assets = ml_collections.ConfigDict()  # tiny model sizes; empty = the defaults
  c.models = ml_collections.ConfigDict(dict(
      pipeline=ml_collections.config_dict.placeholder(str),
      critic=ml_collections.config_dict.placeholder(str),
      critic_lora=ml_collections.config_dict.placeholder(str)))
  c.real = ml_collections.config_dict.placeholder(str)
  c.real_weight = 1.0
  # Tiny video: 9 frames at 32x48 pixels -> latents 3x4x6. Overrides are "field=value" strings
  # passed to each stage's own config.
  video = ["video.num_frames=9", "video.height=32", "video.width=48"]
  c.generate = ml_collections.ConfigDict(dict(
      config="configs/cogvideox_5b.py",
      overrides=["model.dtype=float32", "sampling.num_steps=4", "sampling.sampler=ddim",
                 "sampling.use_dynamic_cfg=False", "batch_size=4"] + video))
  c.score = ml_collections.ConfigDict(dict(
      config="configs/critic_13b.py", mode="logits",
      # A random critic puts little mass on Good/Normal/Bad: take the argmax of the three anyway.
      overrides=["critic.dtype=float32", "reward.min_label_mass=0.0"]))
  c.prepare = ml_collections.ConfigDict(dict(args=[
      "num_frames=9", "height=32", "width=48", "dtype=float32", "embed_dtype=float32"]))
  c.train = ml_collections.ConfigDict(dict(
      config="configs/lift_5b.py",
      overrides=["model.dtype=float32", "model.remat=none", "data.batch_size=8", "num_steps=8",
                 "optim.lr=1e-4", "optim.warmup_steps=2", "checkpoint_every=4", "log_every=1"]))
  return c

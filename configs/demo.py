"""The CPU demo: LiFT's three stages in a small world, on 2 CPU cores in a few minutes.

  python tools/lift.py --config=configs/demo.py --workdir /tmp/lift_demo

The world (`lift_jax.demo`): tiny models in their upstream layouts (a CogVideoX-5B-style pipeline
whose transformer is first pretrained on `demo.world`'s clips, and a VILA-1.5-13B-style critic
whose vision tower passes colour, written under WORKDIR/assets and loaded through the
converters), and a rater standing in for the human annotators (`lift_jax.demo.rater`: written rules
for the critic's three questions, Good / Normal / Bad with a one-sentence reason). The stages:

  round1/generate   the base model makes videos for the training prompts
  rate              the rater grades them, written as a LiFT-HRA release (LLaVA conversations)
  critic_sft        LoRA SFT of the tiny critic on those ratings (`lift-jax train-critic`), with its
                    held-out accuracy per question
  round1/score      the trained critic scores the videos -> rewards
  round1/prepare, round1/train         reward-weighted fine-tuning (LiFT)
  control/train     the same fine-tuning with uniform weights ("plain"), same data and steps
  eval_base, eval_tuned, eval_control  held-out prompts, same seeds, scored by the critic
  rater_eval        the rater grades the three held-out sets
  report            WORKDIR/report.html
"""

import os

import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))
CRITIC_LORA = "{workdir}/critic_sft/adapter"
# Tiny video: 9 frames at 16x16 pixels -> latents 3x2x2 (the readable VAE shows each latent cell as
# an 8x8 colour block); captions as 40 T5 tokens (every demo prompt fits). The world's base model
# is pretrained at these sizes (`lift_jax.demo.world`).
VIDEO = dict(num_frames=9, height=16, width=16)
TEXT_LENGTH = 40


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.rounds = 1
  c.prompts = os.path.join(HERE, "prompts", "demo_train.txt")
  c.eval_prompts = os.path.join(HERE, "prompts", "demo_eval.txt")
  # The tiny models, made under WORKDIR/assets by the world's model factory (settings: overrides
  # of `lift_jax.demo.assets.DEFAULTS`): one world (seed 0) whatever the run's seed.
  c.model_factory = ml_collections.ConfigDict(
      {"module": "lift_jax.demo.assets", "settings": ml_collections.ConfigDict(
          {"seed": 0, "world": dict(**VIDEO, text_length=TEXT_LENGTH)})})
  c.models = ml_collections.ConfigDict(dict(
      pipeline=ml_collections.config_dict.placeholder(str),
      critic=ml_collections.config_dict.placeholder(str),
      critic_lora=CRITIC_LORA))  # the adapter the critic_sft stage trains
  c.real = ml_collections.config_dict.placeholder(str)
  c.real_weight = 1.0
  # Overrides are "field=value" strings passed to each stage's config. The world's captions do not
  # steer the picture, so guidance has nothing to add (scale 1: one transformer call a step).
  c.generate = ml_collections.ConfigDict(dict(
      config="configs/cogvideox_5b.py",
      overrides=["model.dtype=float32", "sampling.num_steps=16", "sampling.sampler=ddim",
                 "sampling.use_dynamic_cfg=False", "sampling.guidance_scale=1.0",
                 f"sampling.max_sequence_length={TEXT_LENGTH}", "batch_size=8",
                 "num_videos_per_prompt=16"] + [f"video.{k}={v}" for k, v in VIDEO.items()]))
  c.score = ml_collections.ConfigDict(dict(
      config="configs/critic_13b.py", mode="logits",
      # A tiny critic puts little mass on Good/Normal/Bad: take the argmax of the three anyway.
      overrides=["critic.dtype=float32", "reward.min_label_mass=0.0"]))
  c.prepare = ml_collections.ConfigDict(dict(args=[
      *(f"{k}={v}" for k, v in VIDEO.items()), f"max_sequence_length={TEXT_LENGTH}",
      "dtype=float32", "embed_dtype=float32"]))
  c.train = ml_collections.ConfigDict(dict(
      config="configs/lift_5b.py",
      overrides=["model.dtype=float32", "model.remat=none", "trainable=full",
                 "data.batch_size=32", "num_steps=100", "optim.lr=2e-3", "optim.warmup_steps=2",
                 "optim.weight_decay=0.0", "checkpoint_every=50", "log_every=10"]))
  c.critic_sft = ml_collections.ConfigDict(dict(
      config="configs/critic_13b_sft.py",
      overrides=["critic.dtype=float32", "critic.param_dtype=float32", "critic.remat=none",
                 "lora.r=32", "lora.alpha=64.0", "lora.dropout=0.0", "data.vidgen=False",
                 "data.test_size=120", "data.batch_size=8", "optim.lr=5e-3", "num_epochs=24",
                 "checkpoint_every=1000", "log_every=8"]))
  c.extra_stages = extra_stages(c)
  c.report = report_block()
  return c


def _flags(overrides):
  return [f"--config.{o}" for o in overrides]


def extra_stages(c) -> list:
  """The demo's stages besides the loop's own (see lift_jax/lift/runner.py, `extra_stages`)."""
  gen = ([f"--config={c.generate.config}", "--model={pipeline}",
          "--config.seed={seed}", "--noprogress"]
         + _flags(c.generate.overrides))
  score = ([f"--config={c.score.config}", "--critic={critic}",
            f"--lora={CRITIC_LORA}", f"--mode={c.score.mode}", "--noprogress"]
           + _flags(c.score.overrides))
  eval_sets = {"base": "eval_base/generate", "reward-weighted": "eval_tuned/generate",
               "plain": "eval_control/generate"}
  return [
      dict(name="rate", after="round1/generate", module="lift_jax.demo.rate",
           summary="summary.json",
           args=["--manifest=train={workdir}/round1/generate/manifest.jsonl", "--out={dir}",
                 "--hra"]),
      dict(name="critic_sft", after="rate", module="critic_train", summary="train_summary.json",
           args=[f"--config={c.critic_sft.config}", "--workdir={dir}",
                 "--config.critic.path={critic}", "--config.data.dir={dir}/hra",
                 "--config.data.manual_dir={workdir}/rate", "--noprogress"]
           + _flags(c.critic_sft.overrides)),
      dict(name="control/train", after="round1/train", module="train",
           summary="train_summary.json",
           args=[f"--config={c.train.config}", "--workdir={dir}",
                 "--config.model.transformer={base_transformer}",
                 "--config.data.dir={workdir}/round1/prepare/dataset",
                 "--config.loss.mode=plain"] + _flags(c.train.overrides)),
      dict(name="eval_control/generate", after="eval_tuned/score", module="generate",
           args=gen + ["--prompts={eval_prompts}", "--out={dir}",
                       "--config.model.transformer={workdir}/control/train/transformer"]),
      dict(name="eval_control/score", after="eval_control/generate", module="score",
           args=score + ["--manifest={workdir}/eval_control/generate/manifest.jsonl",
                         "--out={dir}/scores.jsonl"]),
      dict(name="rater_eval", after="eval_control/score", module="lift_jax.demo.rate",
           summary="summary.json",
           args=["--rater={workdir}/rate/rater.json", "--out={dir}"]
           + [f"--manifest={k}={{workdir}}/{v}/manifest.jsonl" for k, v in eval_sets.items()]),
  ]


def report_block() -> ml_collections.ConfigDict:
  """What the report shows besides base vs fine-tuned by the critic."""
  return ml_collections.ConfigDict(dict(
      title="LiFT demo: ratings → critic → reward-weighted fine-tuning",
      intro=("A rater standing in for human annotators graded the base model's videos on the "
             "critic's three questions (the light matches the caption; the scene is clearly lit; "
             "the motion is smooth). A tiny critic learned those ratings, scored new videos, and "
             "the generator was fine-tuned with the rewards as loss weights (LiFT), beside a plain "
             "fine-tuning control with uniform weights. Below: both judged on held-out prompts."),
      tuned_name="reward-weighted",
      generators={"plain": "{workdir}/eval_control/generate/manifest.jsonl"},
      scores=[dict(generator="plain", by="critic",
                   scores="{workdir}/eval_control/score/scores.jsonl")]
      + [dict(generator=g, by="rater", scores=f"{{workdir}}/rater_eval/{g}/scores.jsonl")
         for g in ("base", "reward-weighted", "plain")],
      histories={"plain": "{workdir}/control/train/train_history.jsonl",
                 "critic SFT": "{workdir}/critic_sft/train_history.jsonl"},
      critic=dict(summary="{workdir}/critic_sft/train_summary.json",
                  data="{workdir}/critic_sft/hra")))

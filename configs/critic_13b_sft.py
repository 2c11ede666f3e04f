"""LiFT-Critic-13B SFT: LoRA on VILA1.5-13b's LLM with LiFT-HRA (+VIDGEN), as LiFT trained it.

  python tools/train_critic.py --config=configs/critic_13b_sft.py --workdir runs/critic_13b \
      --config.critic.path=ckpt/VILA1.5-13b --config.data.dir=work/hra \
      --config.data.manual_dir=data/LiFT      # builds work/hra from the release on first use

LoRA r 128 / alpha 256 / dropout 0.05 on every linear of the LLM (q,k,v,o,gate,up,down), tower
and projector frozen; answer tokens + stop token only; AdamW lr 1e-5, weight decay 0, warmup ratio
0.03 then cosine, clip 1.0; bf16 compute over bf16 frozen weights (LoRA factors fp32), remat per
layer; 16 per device x 8 GPUs = 128 a step; 25 epochs (train_critic_13b.sh; the paper says 20).
At the end: the PEFT adapter (workdir/adapter, VILA key layout) and the test-split accuracy.
"""

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.critic = ml_collections.ConfigDict(dict(
      path=placeholder(str),  # base VILA folder (config.json, llm/, vision_tower/, mm_projector/)
      template="vicuna_v1",
      dtype="bfloat16", param_dtype="bfloat16",  # frozen weights; the LoRA factors are fp32
      remat="full", attention_impl="auto"))
  c.lora = ml_collections.ConfigDict(dict(
      r=128, alpha=256.0, dropout=0.05,
      targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")))
  c.data = ml_collections.ConfigDict(dict(
      dir=placeholder(str),  # the HRA TFDS dataset (lift_jax.data.hra)
      manual_dir=placeholder(str),  # unpacked release (LiFT-HRA/, VIDGEN/): builds `dir` if missing
      vidgen=True,  # the VIDGEN real-video add-on (LiFT-HRA+vidgen), train split only
      test_size=1000,  # entries held out (the paper: 9K train / 1K test); a float is a fraction
      split_seed=0,
      workers=2,  # videos decoded in parallel while building
      batch_size=128,  # global
      max_length=placeholder(int),  # None: from the data (rounded up to length_multiple)
      max_targets=placeholder(int),  # None: the longest answer (+ stop token), rounded up to 8
      length_multiple=64, num_threads=2, prefetch=2))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, warmup_ratio=0.03, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0,
      final_lr_fraction=0.0))
  c.accum_steps = 1
  c.num_epochs = 25
  c.num_steps = placeholder(int)  # overrides num_epochs
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.log_every = 10
  c.max_bad_steps = 20
  c.export = ml_collections.ConfigDict(dict(
      adapter=True,
      layout="vila",  # "vila": base_model.model.llm.* keys (LiFT's); "llm": a bare Llama
      merged=False))  # also write workdir/critic, a converted critic with the LoRA merged
  c.eval = ml_collections.ConfigDict(dict(
      at_end=True, mode="logits",  # logits | generate | both
      batch_size=8, max_new_tokens=64))
  c.compilation_cache = placeholder(str)
  return c

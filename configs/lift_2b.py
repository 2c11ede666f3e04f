"""The paper's run: reward-weighted fine-tuning of CogVideoX-2B (LiFT, arXiv 2412.04814 §4).

  python tools/train.py --config=configs/lift_2b.py --workdir runs/lift_2b \
      --config.model.transformer=ckpt/cogvideox-2b/transformer --config.data.dir=work/prepared

49 frames at 480x720 (latents 13x60x90), global batch 64, lr 1e-5 with 200 warmup steps then
cosine, AdamW (0.9, 0.95, eps 1e-8, weight decay 1e-4), clip 1.0, 20 epochs, the transformer
blocks trainable, fp32 master weights with bf16 compute, remat per block.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      transformer=ml_collections.config_dict.placeholder(str),  # diffusers folder or converted
      dtype="bfloat16", param_dtype="float32", remat="full", attention_impl="auto"))
  # remat: none | full | dots | attention | qkv | qkv_attention | dots_attention (layers/remat.py).
  # attention: kernel settings (layers/attention.py AttentionSettings): splash block sizes etc.
  c.model.attention = ml_collections.ConfigDict(dict(block_q=512, block_kv=512,
                                                     block_kv_compute=512, fused_bwd=False))
  c.schedule = "2b"  # SNR shift 3.0; "5b" for CogVideoX-5B / 1.5 (shift 1.0)
  c.data = ml_collections.ConfigDict(dict(
      dir=ml_collections.config_dict.placeholder(str),  # tools/prepare_data.py output
      batch_size=64,  # global
      real_fraction=ml_collections.config_dict.placeholder(float)))  # None: by split sizes
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, warmup_steps=200, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-4, clip_norm=1.0,
      final_lr_fraction=0.0))
  # mode: rwl (paper) | rejection | plain; transform: raw (paper) | mean1 | exp.
  # real_weight None: real videos weigh the λ stored with them by prepare (--real_weight, the loop
  # config's real_weight); a number here overrides it.
  c.loss = ml_collections.ConfigDict(dict(
      mode="rwl", transform="raw", beta=1.0,
      real_weight=ml_collections.config_dict.placeholder(float)))
  c.trainable = "blocks"  # the paper trains the DiT blocks; "full" everything; "lora" adapters
  c.lora = ml_collections.ConfigDict(dict(rank=64, alpha=64.0))  # attention q/k/v/out, if "lora"
  c.accum_steps = 1
  c.num_epochs = 20
  c.num_steps = ml_collections.config_dict.placeholder(int)  # overrides num_epochs
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, context=1))
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.log_every = 10
  c.max_bad_steps = 20
  c.compilation_cache = ml_collections.config_dict.placeholder(str)
  c.memory_fraction = ml_collections.config_dict.placeholder(float)  # GPU: XLA's share of memory
  c.profile_steps = 0  # > 0: a jax.profiler trace of that many steps (from the 2nd), workdir/profile
  return c

"""Times our jitted sampling loop against diffusers' `CogVideoXPipeline` loop on one config.

Both run the same random transformer (built in torch, saved, loaded through
`cogvideox.load_transformer`), from the same initial noise, with CFG. Prints the median wall time of
each over `--repeats` runs (ours after one compile run, whose time is printed apart) and the ratio.

  python bench/bench_sampling.py                       # the tiny test config, 50 DPM steps
  python bench/bench_sampling.py --sampler ddim --layers 4 --heads 4 --frames 13
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline,
                       CogVideoXTransformer3DModel)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from lift_jax.diffusion import NoiseSchedule, sample  # noqa: E402
from lift_jax.models import cogvideox  # noqa: E402
from tests.reference import perturb_, save_sharded  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--head-dim", type=int, default=16)
  p.add_argument("--frames", type=int, default=3, help="latent frames")
  p.add_argument("--height", type=int, default=8, help="latent height")
  p.add_argument("--width", type=int, default=12, help="latent width")
  p.add_argument("--text-len", type=int, default=8)
  p.add_argument("--rope", action="store_true", help="5B layout (3D RoPE, no SNR shift)")
  p.add_argument("--dynamic-cfg", action="store_true")
  p.add_argument("--torch-threads", type=int, default=0,
                 help="torch intra-op threads (0: torch's default); 1 is steadier on a busy CPU")
  args = p.parse_args()
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  torch.manual_seed(0)
  extra = dict(use_rotary_positional_embeddings=True) if args.rope else {}
  ref = CogVideoXTransformer3DModel(
      num_attention_heads=args.heads, attention_head_dim=args.head_dim, num_layers=args.layers,
      text_embed_dim=32, time_embed_dim=32, max_text_seq_length=args.text_len,
      sample_height=args.height, sample_width=args.width,
      sample_frames=(args.frames - 1) * 4 + 1, **extra)
  perturb_(ref).eval()
  with tempfile.TemporaryDirectory() as tmp:
    ours_model = cogvideox.load_transformer(save_sharded(ref, tmp, dict(ref.config)),
                                            dtype="float32")
  snr = 1.0 if args.rope else 3.0
  scheduler_cls = CogVideoXDPMScheduler if args.sampler == "dpm" else CogVideoXDDIMScheduler
  scheduler = scheduler_cls(snr_shift_scale=snr, rescale_betas_zero_snr=True,
                            prediction_type="v_prediction", timestep_spacing="trailing",
                            clip_sample=False)
  pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=ref,
                           scheduler=scheduler)
  pipe.set_progress_bar_config(disable=True)

  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, args.frames, 16, args.height, args.width)).astype(np.float32)
  cond, uncond = (rng.standard_normal((1, args.text_len, 32)).astype(np.float32) for _ in range(2))

  def run_torch():
    with torch.no_grad():
      return pipe(prompt_embeds=torch.tensor(cond), negative_prompt_embeds=torch.tensor(uncond),
                  latents=torch.tensor(x), num_inference_steps=args.steps, guidance_scale=6.0,
                  use_dynamic_cfg=args.dynamic_cfg, output_type="latent", return_dict=False,
                  generator=torch.Generator().manual_seed(0))[0]

  xj, cj, uj = jnp.asarray(x), jnp.asarray(cond), jnp.asarray(uncond)

  def run_ours(seed=0):
    return sample(ours_model, xj, cj, uj, schedule=NoiseSchedule(snr_shift_scale=snr),
                  num_steps=args.steps, guidance_scale=6.0, use_dynamic_cfg=args.dynamic_cfg,
                  sampler=args.sampler, key=jax.random.key(seed)).block_until_ready()

  def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

  first = timed(run_ours)
  ours = [timed(run_ours) for _ in range(args.repeats)]
  timed(run_torch)  # warm-up (allocator, kernels)
  theirs = [timed(run_torch) for _ in range(args.repeats)]
  mo, mt = statistics.median(ours), statistics.median(theirs)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); torch threads "
        f"{torch.get_num_threads()}")
  print(f"config: {args.layers} layers, {args.heads}x{args.head_dim} heads, latents "
        f"{tuple(x.shape)}, text {args.text_len}, {args.sampler} {args.steps} steps, CFG 6"
        f"{' dynamic' if args.dynamic_cfg else ''}, {'5B/RoPE' if args.rope else '2B/sincos'}")
  print(f"ours (jitted scan):   first call {first:.3f} s (compile + run), "
        f"median {mo * 1e3:.1f} ms over {args.repeats}")
  print(f"diffusers pipeline:   median {mt * 1e3:.1f} ms over {args.repeats}")
  print(f"speed-up diffusers/ours: {mt / mo:.2f}x")


if __name__ == "__main__":
  main()

"""Times our whole text -> video path against diffusers' `CogVideoXPipeline` on one tiny config.

Both pipelines are the same random tiny CogVideoX (tokenizer, T5, transformer, VAE, scheduler)
built in torch and saved with `save_pretrained`; ours loads that folder with `load_pipeline`.
Both start from the same initial noise, run CFG with the same sampler and decode with the VAE
(tiling off). Prints the median wall time of each over `--repeats` runs (ours after a compile
run, timed apart), our per-stage split, the ratio, and the two videos' relative difference.

  python bench/bench_pipeline.py                       # 2 prompts, 50 DPM steps, 9 frames 32x48
  python bench/bench_pipeline.py --sampler ddim --layout 5b --torch-threads 1
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
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from lift_jax.diffusion import draw_noise, load_pipeline  # noqa: E402
from tests.diffusion.test_pipeline import (FRAMES, HEIGHT, PROMPTS, WIDTH,  # noqa: E402
                                           build_tiny_pipeline)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--sampler", choices=("ddim", "dpm"), default="dpm")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--prompts", type=int, default=2, help="batch size (1-3)")
  p.add_argument("--layout", choices=("2b", "5b"), default="2b",
                 help="2b: sin-cos positions; 5b: 3D RoPE")
  p.add_argument("--dynamic-cfg", action="store_true")
  p.add_argument("--torch-threads", type=int, default=0,
                 help="torch intra-op threads (0: torch's default); 1 is steadier on a busy CPU")
  args = p.parse_args()
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  prompts, seeds = PROMPTS[:args.prompts], list(range(args.prompts))
  settings = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_steps=args.steps,
                  guidance_scale=6.0, use_dynamic_cfg=args.dynamic_cfg, sampler=args.sampler)

  with tempfile.TemporaryDirectory() as root:
    pipe = build_tiny_pipeline(root, args.layout)
    ours = load_pipeline(root, dtype="float32")
  scheduler_cls = CogVideoXDPMScheduler if args.sampler == "dpm" else CogVideoXDDIMScheduler
  pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
  init, _ = draw_noise(seeds, ours.latent_shape(FRAMES, HEIGHT, WIDTH), jnp.float32)
  latents = torch.tensor(np.asarray(init))

  torch_stage = {}

  def run_torch():
    with torch.no_grad():
      t0 = time.perf_counter()
      lat = pipe(prompt=prompts, negative_prompt="", height=HEIGHT, width=WIDTH,
                 num_frames=FRAMES, num_inference_steps=args.steps, guidance_scale=6.0,
                 use_dynamic_cfg=args.dynamic_cfg, latents=latents.clone(),
                 output_type="latent", return_dict=False,
                 generator=torch.Generator().manual_seed(0))[0]
      t1 = time.perf_counter()
      out = pipe.decode_latents(lat).numpy()
      torch_stage.update({"encode + sample": t1 - t0, "decode": time.perf_counter() - t1})
      return out

  def run_ours():
    return ours.generate(prompts, seeds, **settings).block_until_ready()

  def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out

  first, _ = timed(run_ours)
  ours_times = [timed(run_ours)[0] for _ in range(args.repeats)]
  # Our stages, one call each (already compiled).
  stage = {}
  t0 = time.perf_counter()
  cond, uncond = ours.encode_prompts(prompts)
  cond.block_until_ready()
  stage["encode"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  lat = ours.sample_latents(cond, uncond, seeds, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                            num_steps=args.steps, guidance_scale=6.0,
                            use_dynamic_cfg=args.dynamic_cfg, sampler=args.sampler)
  lat.block_until_ready()
  stage["sample"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  video = ours.decode(lat, FRAMES).block_until_ready()
  stage["decode"] = time.perf_counter() - t0

  timed(run_torch)  # warm-up (allocator, kernels)
  theirs = [timed(run_torch) for _ in range(args.repeats)]
  ref = theirs[-1][1]
  mo, mt = statistics.median(ours_times), statistics.median(t for t, _ in theirs)
  diff = float(np.max(np.abs(np.asarray(video) - ref)) / np.max(np.abs(ref)))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); torch threads "
        f"{torch.get_num_threads()}")
  print(f"config: tiny {args.layout} pipeline, {len(prompts)} prompts, {FRAMES} frames "
        f"{HEIGHT}x{WIDTH}, {args.sampler} {args.steps} steps, CFG 6"
        f"{' dynamic' if args.dynamic_cfg else ''}, fp32")
  print(f"ours (T5 + jitted scan + VAE): first call {first:.2f} s (compile + run), median "
        f"{mo * 1e3:.0f} ms over {args.repeats}; stages "
        + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in stage.items()))
  print(f"diffusers pipeline:            median {mt * 1e3:.0f} ms over {args.repeats}; last run "
        + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in torch_stage.items()))
  print(f"speed-up diffusers/ours: {mt / mo:.2f}x   (video rel diff "
        f"{'n/a (DPM noise differs)' if args.sampler == 'dpm' else f'{diff:.1e}'})")


if __name__ == "__main__":
  main()

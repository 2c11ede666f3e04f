#!/usr/bin/env python
"""Our jitted LiFT train step vs diffusers' transformer + torch AdamW, same tiny config, one run.

  python bench/bench_train_step.py [--steps 20] [--torch-threads 2]

Both sides: reward-weighted v-MSE on the same batch shape, forward + backward + AdamW update of
the transformer blocks. Prints medians and the ratio (torch / ours).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = dict(num_attention_heads=4, attention_head_dim=32, num_layers=4, text_embed_dim=64,
              time_embed_dim=64, max_text_seq_length=32, sample_height=16, sample_width=24,
              sample_frames=9, use_rotary_positional_embeddings=True)
BATCH, FRAMES = 2, 3


def bench_ours(steps: int) -> list[float]:
  import jax
  import numpy as np
  from flax import nnx

  from lift_jax import parallel
  from lift_jax.lift import train
  from lift_jax.models import cogvideox

  cfg = cogvideox.CogVideoXConfig.from_diffusers_config(CONFIG)
  model = cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0))
  tr = train.Trainer(model, mesh=parallel.make_mesh({"data": 1}, jax.devices()[:1]))
  rng = np.random.default_rng(0)
  batch = tr.put_batch(dict(
      latents=rng.normal(size=(BATCH, FRAMES, 16, 16, 24)).astype(np.float32),
      text_embeds=rng.normal(size=(BATCH, 32, 64)).astype(np.float32),
      reward=np.full((BATCH,), 0.5, np.float32), is_real=np.zeros(BATCH, bool),
      all_good=np.zeros(BATCH, bool)))
  state = tr.init_state()
  state, m = tr.step(state, batch)
  jax.block_until_ready(m["loss"])
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = tr.step(state, batch)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  return times


def bench_torch(steps: int) -> list[float]:
  import torch
  from diffusers import CogVideoXTransformer3DModel
  from diffusers.models.embeddings import get_3d_rotary_pos_embed
  from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

  torch.manual_seed(0)
  model = CogVideoXTransformer3DModel(**CONFIG)
  params = [p for n, p in model.named_parameters() if n.startswith("transformer_blocks")]
  for n, p in model.named_parameters():
    p.requires_grad_(n.startswith("transformer_blocks"))
  opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4)
  x0 = torch.randn(BATCH, FRAMES, 16, 16, 24)
  text = torch.randn(BATCH, 32, 64)
  reward = torch.full((BATCH,), 0.5)
  crops = get_resize_crop_region_for_grid((8, 12), 12, 8)
  rope = get_3d_rotary_pos_embed(32, crops, (8, 12), FRAMES)
  alphas = torch.linspace(0.9999, 0.01, 1000)

  def step():
    t = torch.randint(0, 1000, (BATCH,))
    eps = torch.randn_like(x0)
    a = alphas[t].view(-1, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    pred = model(xt, text, t, image_rotary_emb=rope).sample
    loss = (reward * ((pred - v) ** 2).mean(dim=(1, 2, 3, 4))).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()

  step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--torch-threads", type=int, default=None)
  args = parser.parse_args()
  if args.torch_threads:
    import torch
    torch.set_num_threads(args.torch_threads)
  ours = statistics.median(bench_ours(args.steps))
  theirs = statistics.median(bench_torch(args.steps))
  print(f"train step, tiny CogVideoX-5B-style ({CONFIG['num_layers']} layers, D="
        f"{CONFIG['num_attention_heads'] * CONFIG['attention_head_dim']}), batch {BATCH}, "
        f"latents {FRAMES}x16x16x24: ours {ours * 1e3:.1f} ms, diffusers+torch AdamW "
        f"{theirs * 1e3:.1f} ms (medians of {args.steps}); ratio torch/ours {theirs / ours:.2f}x")


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""Per-device memory of the full-size LiFT train step, from the AOT-compiled step (nothing runs).

  python bench/train_memory.py --model 2b --devices 8 [--remat full] [--batch_per_device 1]
  for r in none full dots attention qkv qkv_attention dots_attention; do   # one at a time
    python bench/train_memory.py --model 2b --remat $r --row; done          # markdown table rows

Builds the model abstractly (no weights), shards it over a fake mesh of N CPU devices (fsdp=N),
compiles the jitted train step for 49 frames at 480x720 (latents 13x60x90) and prints XLA's
memory analysis per device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="2b", choices=["2b", "5b"])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--remat", default="full",
                      help="a policy name from lift_jax/layers/remat.py (none, full, dots, "
                           "attention, qkv, qkv_attention, dots_attention)")
  parser.add_argument("--batch_per_device", type=int, default=1)
  parser.add_argument("--trainable", default="blocks", choices=["blocks", "full"])
  parser.add_argument("--attention_impl", default="chunked",
                      help="chunked: exact XLA attention in query blocks (what a CPU can compile)")
  parser.add_argument("--row", action="store_true", help="also print a bench/RESULTS.md table row")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from flax import nnx

  from lift_jax import parallel
  from lift_jax.diffusion.schedule import NoiseSchedule
  from lift_jax.lift import memory, train
  from lift_jax.models import cogvideox

  preset = (cogvideox.CogVideoXConfig.cogvideox_2b if args.model == "2b"
            else cogvideox.CogVideoXConfig.cogvideox_5b)
  cfg = preset(dtype="bfloat16", param_dtype="float32", remat=args.remat,
               attention_impl=args.attention_impl)
  mesh = parallel.make_mesh({"fsdp": args.devices})
  model = nnx.eval_shape(lambda: cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0)))
  schedule = NoiseSchedule.cogvideox_2b() if args.model == "2b" else NoiseSchedule.cogvideox_5b()
  trainer = train.Trainer(model, mesh=mesh, schedule=schedule, trainable=args.trainable)
  batch = args.batch_per_device * args.devices
  spec = train.batch_spec(batch, 13, 16, 60, 90, 226, 4096, dtype="bfloat16")
  start = time.perf_counter()
  compiled = trainer.lower(spec).compile()
  plan = memory.plan(compiled, trainer.abstract_state(), trainer.frozen, capacity=None)
  print(f"CogVideoX-{args.model.upper()} train step, 49x480x720, batch {args.batch_per_device}"
        f"/device on {args.devices} devices (fsdp={args.devices}), remat={args.remat}, "
        f"trainable={args.trainable}, bf16 compute / fp32 master weights "
        f"(compiled in {time.perf_counter() - start:.0f}s)")
  print(plan.report().rsplit(" of ", 1)[0])
  print(f"XLA: arguments {plan.argument_bytes / 2**30:.2f} GiB, outputs "
        f"{plan.output_bytes / 2**30:.2f} GiB, temporaries {plan.temp_bytes / 2**30:.2f} GiB")
  if args.row:
    gib = lambda n: f"{n / 2**30:.2f} GiB"
    print(f"| CogVideoX-{args.model.upper()} | {args.remat} | {gib(plan.params_bytes)} | "
          f"{gib(plan.optimizer_bytes)} | {gib(plan.temp_bytes)} | **{gib(plan.total_bytes)}** |")


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""Peak memory of converting a full-size CogVideoX transformer (2B by default).

Writes a synthetic checkpoint in the diffusers layout (random fp16 weights, sharded safetensors +
index, every key and shape of the real one), converts it in a fresh process with
tools/convert_checkpoint.py, and reports that process's peak RSS against the converted model's size.

  python bench/convert_memory.py --workdir /tmp/convert_bench [--model 2b|5b] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from lift_jax.checkpoint.safetensors import write_sharded  # noqa: E402
from lift_jax.models.cogvideox import CogVideoXConfig  # noqa: E402
from lift_jax.models.cogvideox.params import diffusers_shapes  # noqa: E402


def write_synthetic(cfg: CogVideoXConfig, folder: str, shard_bytes: int) -> int:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg.to_diffusers_config(), f)
  rng = np.random.default_rng(0)
  shapes = diffusers_shapes(cfg)

  def tensors():
    for key, shape in shapes.items():
      yield key, (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)

  write_sharded(folder, tensors(), weights_name="diffusion_pytorch_model",
                max_shard_bytes=shard_bytes)
  return sum(int(np.prod(s)) for s in shapes.values())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", default="/tmp/lift_convert_bench")
  parser.add_argument("--model", default="2b", choices=["2b", "5b"])
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--shard_gb", type=float, default=1.0)
  args = parser.parse_args()
  cfg = CogVideoXConfig.cogvideox_2b() if args.model == "2b" else CogVideoXConfig.cogvideox_5b()
  src = os.path.join(args.workdir, f"cogvideox-{args.model}", "transformer")
  dst = os.path.join(args.workdir, f"converted-{args.model}-{args.dtype}")
  start = time.perf_counter()
  n_params = write_synthetic(cfg, src, int(args.shard_gb * 1024**3))
  print(f"synthetic checkpoint: {n_params / 1e9:.3f} B params, "
        f"{len([f for f in os.listdir(src) if f.endswith('.safetensors')])} shards, "
        f"{time.perf_counter() - start:.0f}s")
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"),
                  "--kind", "cogvideox-transformer", "--src", src, "--dst", dst,
                  "--dtype", args.dtype, "--overwrite", "--compilation_cache", ""], check=True)
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
  model_bytes = n_params * np.dtype(args.dtype if args.dtype != "bfloat16" else np.float16).itemsize
  print(f"conversion: {time.perf_counter() - start:.0f}s; peak RSS {peak / 1e9:.2f} GB; "
        f"converted model {model_bytes / 1e9:.2f} GB; ratio {peak / model_bytes:.2f}x")


if __name__ == "__main__":
  main()

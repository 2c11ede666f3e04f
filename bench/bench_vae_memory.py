"""Peak-memory estimate of the full-size CogVideoX VAE, from XLA's ahead-of-time compile.

Builds the model abstractly (`nnx.eval_shape`: no weights, no device memory), lowers the jitted
decode (or encode) on `ShapeDtypeStruct` inputs, compiles it and prints `memory_analysis()`:
argument (weights + input), output and temp (activations, conv caches) bytes. Under `jax.jit` the
VAE builds one program (first chunk, then `lax.scan` over the rest; tiles by `lax.map`), so the
temp figure is the peak working set of the whole decode. It compiles for the default backend: on a
CPU-only host that is the CPU compiler, whose buffer assignment is close to, not identical to, a
GPU's. Nothing runs.

  python bench/bench_vae_memory.py                      # 2B decode, 13 latents -> 49x480x720, bf16
  python bench/bench_vae_memory.py --tiling both --part encode
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax.models.cogvideox.vae import AutoencoderKLCogVideoX, CogVideoXVAEConfig

GiB = 1024 ** 3


def compile_part(part: str, *, frames: int, height: int, width: int, batch: int, dtype: str,
                 tiling: bool, model: str = "2b"):
  """AOT-compiles `part` ('decode' or 'encode') of the full-size VAE; returns (compiled, seconds)."""
  preset = CogVideoXVAEConfig.cogvideox_2b if model == "2b" else CogVideoXVAEConfig.cogvideox_5b
  cfg = preset(dtype=dtype, param_dtype=dtype)
  abstract = nnx.eval_shape(lambda: AutoencoderKLCogVideoX(cfg, rngs=nnx.Rngs(0)))
  if tiling:
    abstract.enable_tiling()
  graphdef, state = nnx.split(abstract)
  s, t = cfg.spatial_compression_ratio, cfg.temporal_compression_ratio
  if part == "decode":
    latent_frames = (frames - 1) // t + 1
    x = jax.ShapeDtypeStruct((batch, cfg.latent_channels, latent_frames, height // s, width // s),
                             jnp.dtype(dtype))
    fn = lambda st, z: nnx.merge(graphdef, st).decode(z)
  else:
    x = jax.ShapeDtypeStruct((batch, cfg.in_channels, frames, height, width), jnp.dtype(dtype))
    fn = lambda st, v: nnx.merge(graphdef, st).encode(v)
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(state, x).compile()
  return compiled, time.perf_counter() - start, x.shape


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--part", choices=("decode", "encode"), default="decode")
  parser.add_argument("--model", choices=("2b", "5b"), default="2b")
  parser.add_argument("--frames", type=int, default=49, help="pixel frames (49 = 13 latents)")
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=720)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--tiling", choices=("off", "on", "both"), default="both",
                      help="off is diffusers' default; on uses enable_tiling()'s defaults")
  args = parser.parse_args()

  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
  for tiling in {"off": [False], "on": [True], "both": [False, True]}[args.tiling]:
    compiled, seconds, shape = compile_part(args.part, frames=args.frames, height=args.height,
                                            width=args.width, batch=args.batch, dtype=args.dtype,
                                            tiling=tiling, model=args.model)
    m = compiled.memory_analysis()
    temp, arg, out = m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes
    alias = getattr(m, "alias_size_in_bytes", 0)
    total = temp + arg + out - alias
    print(f"{args.model} {args.part} input {tuple(shape)} {args.dtype} "
          f"tiling={'on' if tiling else 'off'} (compiled in {seconds:.1f} s)")
    print(f"  temp     {temp / GiB:8.3f} GiB")
    print(f"  argument {arg / GiB:8.3f} GiB   (weights + input)")
    print(f"  output   {out / GiB:8.3f} GiB")
    if alias:
      print(f"  aliased  {alias / GiB:8.3f} GiB")
    print(f"  total    {total / GiB:8.3f} GiB   ({total} bytes)")


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""End-to-end check of the CogVideoX port on this machine, no downloads needed.

1. Creates a tiny random CogVideoX transformer and writes it in the diffusers layout
   (config.json + sharded safetensors), as a published checkpoint would be.
2. Converts it with the same code path as tools/convert_checkpoint.py.
3. Loads the converted checkpoint onto a device mesh and runs a jitted forward pass.

  python tools/demo.py --config=configs/demo.py --workdir /tmp/lift_demo
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "demo config file")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lift_demo", "where checkpoints are written")


def main(argv) -> None:
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from lift_jax import parallel, runtime
  from lift_jax.checkpoint import convert
  from lift_jax.models import cogvideox

  cfg = _CONFIG.value
  cache = runtime.setup(cfg.compilation_cache)
  workdir = os.path.abspath(_WORKDIR.value)
  upstream = os.path.join(workdir, "upstream", "transformer")
  converted = os.path.join(workdir, "converted", "transformer")
  print(f"devices: {jax.devices()}  compilation cache: {cache}")

  # 1. A random model, written as diffusers would publish it.
  model_cfg = cogvideox.CogVideoXConfig.from_diffusers_config(cfg.transformer.to_dict())
  model = cogvideox.CogVideoXTransformer3D(model_cfg, rngs=nnx.Rngs(cfg.seed))
  cogvideox.export_diffusers(model, upstream, max_shard_bytes=256 * 1024, overwrite=True)
  shards = sorted(f for f in os.listdir(upstream) if f.endswith(".safetensors"))
  print(f"[1/3] wrote a tiny diffusers checkpoint: {upstream} ({len(shards)} shards)")

  # 2. Convert (streaming, table-driven, atomic output).
  summary = convert.convert("cogvideox-transformer", upstream, converted, dtype=cfg.dtype,
                            overwrite=True, progress=False)
  print(f"[2/3] converted: {json.dumps(summary)}")

  # 3. Load onto the mesh and run the jitted forward pass.
  mesh = parallel.make_mesh(cfg.mesh.to_dict())
  transformer = cogvideox.load_transformer(converted, dtype=cfg.dtype, mesh=mesh)
  key = jax.random.key(cfg.seed)
  k1, k2 = jax.random.split(key)
  latents = jax.random.normal(k1, (cfg.batch, cfg.latent_frames, model_cfg.in_channels,
                                   cfg.latent_height, cfg.latent_width))
  text = jax.random.normal(k2, (cfg.batch, model_cfg.max_text_seq_length, model_cfg.text_embed_dim))
  timesteps = jnp.array([999, 500][: cfg.batch] + [0] * max(cfg.batch - 2, 0))
  forward = nnx.jit(lambda m, x, c, t: m(x, c, t))
  with parallel.use_mesh(mesh):
    start = time.perf_counter()
    v = jax.block_until_ready(forward(transformer, latents, text, timesteps))
    first = time.perf_counter() - start
    start = time.perf_counter()
    v = jax.block_until_ready(forward(transformer, latents, text, timesteps))
    second = time.perf_counter() - start
  reference = model(latents, text, timesteps)
  err = float(jnp.max(jnp.abs(v - reference)) / jnp.max(jnp.abs(reference)))
  print(f"[3/3] forward: latents {latents.shape} -> v {v.shape}; first call {first:.2f}s "
        f"(compile), second {second * 1e3:.1f}ms; |converted - original| / |original| = {err:.1e}")
  if not np.isfinite(np.asarray(v)).all() or err > 1e-5:
    raise SystemExit("demo failed: converted model does not reproduce the original")
  print("demo OK")


if __name__ == "__main__":
  app.run(main)

"""A complete tiny training job (transformer checkpoint, prepared data, config) for the loop tests.

Run as a script it trains: `python -m tests.lift.tiny_run WORKDIR [num_steps] [mesh]`.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=16,
                   time_embed_dim=32, max_text_seq_length=6, sample_height=8, sample_width=8,
                   sample_frames=5, use_rotary_positional_embeddings=True)
LATENT = (16, 2, 8, 8)  # [C, f, h, w]


def make_inputs(root: str) -> tuple[str, str]:
  """A converted tiny transformer and a prepared dataset under `root` (idempotent)."""
  from flax import nnx

  from lift_jax.data import generated
  from lift_jax.models import cogvideox

  transformer = os.path.join(root, "transformer")
  data = os.path.join(root, "prepared")
  if not os.path.exists(transformer):
    cfg = cogvideox.CogVideoXConfig.from_diffusers_config(TRANSFORMER)
    cogvideox.save_transformer(cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0)), transformer)
  if not os.path.exists(data):
    rng = np.random.default_rng(0)

    def examples(n, real):
      for i in range(n):
        yield {"latent_mean": rng.normal(size=LATENT).astype(np.float32),
               "latent_logvar": np.full(LATENT, -4.0, np.float32),
               "text_embeds": rng.normal(size=(6, 16)).astype(np.float32),
               "reward": np.float32(0.9 if real else rng.choice([0.05, 0.2, 0.9])),
               "is_real": real, "all_good": real, "caption": f"video {i}".encode(),
               "path": f"v{i}.mp4".encode()}

    generated.write_dataset(data, {"synthetic": examples(12, False), "real": examples(4, True)},
                            latent_shape=LATENT, text_shape=(6, 16), embed_dtype="float32",
                            metadata={"scaling_factor": 0.7})
  return transformer, data


def config(root: str, num_steps: int = 6, mesh: dict | None = None):
  from configs import lift_2b

  transformer, data = make_inputs(root)
  c = lift_2b.get_config()
  c.model.transformer = transformer
  c.model.dtype = "float32"
  c.model.remat = "none"
  c.data.dir = data
  c.data.batch_size = 8
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 2
  c.num_steps = num_steps
  c.checkpoint_every = 2
  c.log_every = 1
  c.compilation_cache = ""
  if mesh:
    c.mesh.update(mesh)
  return c


def final_params(workdir: str) -> dict[str, np.ndarray]:
  from flax import nnx

  from lift_jax.checkpoint.tables import flat_variables
  from lift_jax.models import cogvideox

  model = cogvideox.load_transformer(os.path.join(workdir, "transformer"))
  return {k: np.asarray(v[...]) for k, v in flat_variables(nnx.state(model)).items()}


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from lift_jax.lift import loop

  workdir = sys.argv[1]
  steps = int(sys.argv[2]) if len(sys.argv) > 2 else 6
  mesh = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
  inputs = os.path.join(os.path.dirname(os.path.abspath(workdir)), "inputs")
  print(json.dumps(loop.run(config(inputs, steps, mesh), workdir)))

"""The demo's world: what its tiny base generator was "pretrained" on, and that pretraining.

A random transformer samples per-cell noise: its videos have no kinds that a reward could favour,
and fine-tuning on its own samples moves it anywhere (bench/RESULTS.md, the demo's world). LiFT
starts from a pretrained model whose videos differ in ways people judge, so the demo's asset
factory first teaches the tiny transformer this world (in the readable VAE's latents, where
channels 0-2 are the picture's colour, `demo.readable_vae`):

  every video is one scene of 2x2 coloured blocks (8x8 pixels each) with a per-video
    light level   L ~ N(0, level)        added to red, green and blue,
    warmth        W ~ N(0, warmth)       added to red, taken from blue,
    flicker       A ~ U(0, flicker)      added to every colour as +A, -A, +A over the 3 latent
                                         frames (a steady clip has A = 0),
    and a fixed per-block detail N(0, detail);
  the other latent channels are 0, and the caption's wording plays no part.

The rater (`demo.rater`) grades exactly these: warmth, brightness and flicker. The base model's
videos therefore spread over good and bad ones, a reward can pick the good ones, and fine-tuning
on the base's own samples with uniform weights (the "plain" control) leaves it about where it was.
The pretraining is the library's own trainer (`lift.train.Trainer`, plain v-prediction loss).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.lift import train as train_lib
from lift_jax.lift.train_core import OptimConfig
from lift_jax.parallel import mesh as mesh_lib

logger = logging.getLogger(__name__)

COLOURS = 3  # latent channels 0-2 are R, G, B (the readable VAE)
WARM = np.array([1.0, 0.0, -1.0])  # warmth: more red, less blue


@dataclasses.dataclass(frozen=True)
class World:
  """Spreads of the per-video factors, in VAE latent units (pixel = gain x latent)."""

  level: float = 0.5
  warmth: float = 0.5
  flicker: float = 0.8
  detail: float = 0.1

  def sample(self, rng: np.random.Generator, n: int, latent_shape: Sequence[int],
             scaling_factor: float) -> np.ndarray:
    """`n` videos' latents `[n, F, C, H, W]` as the transformer sees them (x scaling_factor)."""
    frames, channels, height, width = latent_shape
    if channels < COLOURS:
      raise ValueError(f"the world needs >= {COLOURS} latent channels, got {channels}")
    level = rng.normal(0.0, self.level, n)
    warmth = rng.normal(0.0, self.warmth, n)
    flicker = rng.uniform(0.0, self.flicker, n)
    colour = level[:, None] + warmth[:, None] * WARM  # [n, 3]
    sign = np.where(np.arange(frames) % 2 == 0, 1.0, -1.0)  # +A, -A, +A, ...
    detail = rng.normal(0.0, self.detail, (n, 1, COLOURS, height, width))
    z = np.zeros((n, frames, channels, height, width), np.float32)
    z[:, :, :COLOURS] = (colour[:, None, :, None, None]
                         + (flicker[:, None] * sign)[:, :, None, None, None] + detail)
    return z * np.float32(scaling_factor)


def pretrain(transformer: nnx.Module, text_embeds: np.ndarray, latent_shape: Sequence[int], *,
             world: World = World(), scaling_factor: float, schedule: NoiseSchedule,
             steps: int, lr: float, batch_size: int, seed: int) -> nnx.Module:
  """`transformer` taught the world: `steps` AdamW steps (cosine decay) of the plain v-MSE loss on
  fresh world videos, each paired with a random row of `text_embeds` `[P, L, D]` (the captions
  the demo uses, and "" for the unconditional branch), on one device so that the world does not
  depend on the machine. Returns the trained model."""
  trainer = train_lib.Trainer(
      transformer, mesh=mesh_lib.make_mesh(devices=jax.local_devices()[:1]),
      optim=OptimConfig(lr=lr, warmup_steps=max(1, steps // 20), total_steps=steps,
                        weight_decay=0.0),
      loss=train_lib.LossConfig(mode="plain"), schedule=schedule, trainable="full", seed=seed)
  state = trainer.init_state()
  rng = np.random.default_rng(seed)
  text_embeds = np.asarray(text_embeds, np.float32)
  ones, no = np.ones(batch_size, np.float32), np.zeros(batch_size, bool)
  for step in range(steps):
    rows = rng.integers(0, len(text_embeds), batch_size)
    batch = {"latents": world.sample(rng, batch_size, latent_shape, scaling_factor),
             "text_embeds": text_embeds[rows], "reward": ones, "is_real": no, "all_good": no}
    state, metrics = trainer.step(state, batch)
    if step % 100 == 0 or step == steps - 1:
      logger.info("world pretraining step %d/%d: loss %.4f", step + 1, steps,
                  float(metrics["loss"]))
  return trainer.model(state)

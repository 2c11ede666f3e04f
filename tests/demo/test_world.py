"""The demo's world: per-video light level, warmth and flicker in the colour channels only."""

import numpy as np
import pytest

from lift_jax.demo.world import World


def test_world_videos_vary_per_video_in_the_rated_ways():
  world = World(level=0.5, warmth=0.5, flicker=0.8, detail=0.1)
  z = world.sample(np.random.default_rng(0), 4000, (3, 16, 2, 2), scaling_factor=0.7) / 0.7
  assert z.shape == (4000, 3, 16, 2, 2) and z.dtype == np.float32
  assert not z[:, :, 3:].any()  # only the colour channels carry the picture
  colour = z[:, :, :3].mean(axis=(3, 4))  # [n, frame, rgb]
  level = colour.mean(axis=(1, 2))
  warmth = (colour[..., 0] - colour[..., 2]).mean(axis=1) / 2
  flicker = (colour[:, 0] - colour[:, 1]).mean(axis=1) / 2  # +A then -A
  assert level.std() == pytest.approx(0.5, rel=0.06)
  assert warmth.std() == pytest.approx(0.5, rel=0.06)
  assert flicker.min() >= 0 and flicker.max() <= 0.8 and flicker.mean() == pytest.approx(0.4, 0.06)
  np.testing.assert_allclose(colour[:, 0], colour[:, 2], atol=1e-6)  # +A, -A, +A
  # The block detail is the same in every frame: only the flicker changes a clip over time.
  detail = z[:, :, :3] - z[:, :, :3].mean(axis=(3, 4), keepdims=True)
  np.testing.assert_allclose(detail[:, 0], detail[:, 1], atol=1e-6)


def test_world_needs_the_colour_channels():
  with pytest.raises(ValueError, match="latent channels"):
    World().sample(np.random.default_rng(0), 1, (3, 2, 2, 2), scaling_factor=1.0)

"""The demo's readable VAE: pixels are the latent's colour channels; encoding gives them back."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax.demo import assets, readable_vae
from lift_jax.models import cogvideox


def test_decode_shows_the_latent_colour_and_encode_returns_it():
  cfg = assets.resolve_config()["vae"]
  vae = cogvideox.AutoencoderKLCogVideoX(
      cogvideox.CogVideoXVAEConfig.from_diffusers_config(cfg), rngs=nnx.Rngs(0))
  gain = 0.8
  readable_vae.make_readable(vae, gain)
  rng = np.random.default_rng(0)
  z = np.zeros((1, 16, 3, 2, 2), np.float32)  # 3 latent frames: 9 video frames at 16x16
  z[:, :3] = rng.uniform(-1.1, 1.1, (1, 3, 3, 2, 2))
  z[:, 3:] = rng.normal(size=(1, 13, 3, 2, 2))  # unused channels do not show
  video = np.asarray(vae.decode(jnp.asarray(z)))
  assert video.shape == (1, 3, 9, 16, 16)
  # Frame 0 is latent frame 0, frames 1-4 latent frame 1, 5-8 latent frame 2; a cell 8x8 pixels.
  want = gain * z[:, :3][:, :, [0, 1, 1, 1, 1, 2, 2, 2, 2]]
  want = np.repeat(np.repeat(want, 8, axis=3), 8, axis=4)
  np.testing.assert_allclose(video, want, atol=2e-3)
  mean, logvar = vae.encode(jnp.asarray(video))
  np.testing.assert_allclose(np.asarray(mean)[:, :3], z[:, :3], atol=5e-3)
  np.testing.assert_allclose(np.asarray(mean)[:, 3:], 0.0, atol=1e-5)
  assert np.all(np.asarray(logvar) == readable_vae.LOGVAR)

"""The demo critic's readable tower: the tokens VILA reads carry each patch's colour."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lift_jax.demo import assets, readable_critic
from lift_jax.models import siglip


def _tower(**over):
  cfg = siglip.SiglipVisionConfig.from_hf_config(
      {**assets.resolve_config()["critic"]["vision"], **over})
  return siglip.SiglipVisionModel(cfg, rngs=nnx.Rngs(0))


def test_tokens_carry_the_patch_colour_through_the_saved_files(tmp_path):
  tower = readable_critic.make_readable(_tower(), gain=3.0, level=2.0)
  cfg = tower.config
  side = cfg.image_size // cfg.patch_size
  rng = np.random.default_rng(0)
  colours = rng.uniform(-1, 1, (2, 3, side, side)).astype(np.float32)  # one per patch
  pixels = np.repeat(np.repeat(colours, cfg.patch_size, 2), cfg.patch_size, 3)
  pixels += rng.normal(0, 0.05, pixels.shape).astype(np.float32)  # texture averages out
  mean = pixels.reshape(2, 3, side, cfg.patch_size, side, cfg.patch_size).mean((3, 5))
  want = np.zeros((2, side * side, cfg.hidden_size), np.float32)
  want[..., :3] = 3.0 * mean.reshape(2, 3, -1).transpose(0, 2, 1)
  want[..., 3], want[..., 4] = 2.0, -2.0
  # The demo's critic reads hidden_states[-2]; every layer passes its input through.
  np.testing.assert_allclose(np.asarray(tower.features(jnp.asarray(pixels), layer=-1)), want,
                             atol=1e-5)
  # Written and read back as a transformers tower folder, as the demo's critic is.
  loaded = siglip.load(siglip.params.export(tower, str(tmp_path / "vision_tower")),
                       dtype="float32")
  np.testing.assert_allclose(np.asarray(loaded.features(jnp.asarray(pixels), layer=-2)), want,
                             atol=1e-5)


def test_brightness_survives_the_projector_norm():
  """The projector's LayerNorm divides by the merged tokens' spread: without the constant pair a
  dim and a bright grey would come out the same; with it they differ."""
  cfg = _tower().config
  grey = [np.full((1, 3, cfg.image_size, cfg.image_size), v, np.float32) for v in (0.2, 0.6)]

  def normed(level):
    tower = readable_critic.make_readable(_tower(), level=level)
    f = [np.asarray(tower.features(jnp.asarray(g), layer=-2))[0, 0] for g in grey]
    return [(x - x.mean()) / x.std() for x in f]

  dim, bright = normed(1.0)
  assert bright[0] - dim[0] > 0.5
  dim, bright = normed(0.0)
  np.testing.assert_allclose(bright, dim, atol=1e-5)


def test_rejects_a_tower_too_narrow():
  with pytest.raises(ValueError, match="hidden_size=4"):
    readable_critic.make_readable(_tower(hidden_size=4, num_attention_heads=1,
                                         intermediate_size=8))

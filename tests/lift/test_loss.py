"""The LiFT loss against a float64 NumPy transcription of the paper's / train.py's formula."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler
from flax import nnx

from lift_jax.diffusion import NoiseSchedule
from lift_jax.lift import (add_noise, diffusion_loss, draw_timesteps_and_noise, sample_weights,
                           v_target, weighted_v_mse)

SHAPE = (6, 3, 4, 4, 6)  # [B, F, C, H, W]


def x0_form_loss(x0, eps, v_pred, t, w, alphas_cumprod):
  """LiFT train.py in float64: x_t, x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂, mean((x̂0 − x0)²/(1−ᾱ))·w, mean."""
  a = np.asarray(alphas_cumprod, np.float64)[t][:, None, None, None, None]
  x0, eps, v_pred = (np.asarray(z, np.float64) for z in (x0, eps, v_pred))
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
  x0_hat = np.sqrt(a) * x_t - np.sqrt(1 - a) * v_pred
  per = ((x0_hat - x0) ** 2 / (1 - a)).reshape(len(t), -1).mean(1)
  return float(np.mean(np.asarray(w, np.float64) * per)), x_t


def v_form_loss(x0, eps, v_pred, t, w, alphas_cumprod):
  a = np.asarray(alphas_cumprod, np.float64)[t][:, None, None, None, None]
  v = np.sqrt(a) * np.asarray(eps, np.float64) - np.sqrt(1 - a) * np.asarray(x0, np.float64)
  per = ((np.asarray(v_pred, np.float64) - v) ** 2).reshape(len(t), -1).mean(1)
  return float(np.mean(np.asarray(w, np.float64) * per))


def draws(seed=0):
  rng = np.random.default_rng(seed)
  x0, eps, v_pred = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3))
  t = np.array([0, 1, 19, 499, 998, 999])  # both ends of the schedule, where 1/(1−ᾱ) is extreme
  w = np.array([0.9, 0.67, 0.05, 1.0, 0.2, 0.43], np.float32)
  return x0, eps, v_pred, t, w


@pytest.mark.parametrize("preset", ["cogvideox_2b", "cogvideox_5b"])
def test_weighted_v_mse_equals_x0_form(preset):
  schedule = getattr(NoiseSchedule, preset)()
  x0, eps, v_pred, t, w = draws()
  ref, x_t_ref = x0_form_loss(x0, eps, v_pred, t, w, schedule.alphas_cumprod)
  # The two forms of the paper's loss agree (float64), and ours matches both in float32.
  assert abs(v_form_loss(x0, eps, v_pred, t, w, schedule.alphas_cumprod) - ref) <= 1e-12 * ref
  tj = jnp.asarray(t)
  ours = weighted_v_mse(jnp.asarray(v_pred), v_target(x0, eps, tj, schedule), jnp.asarray(w))
  assert ours.dtype == jnp.float32
  assert abs(float(ours) - ref) / ref < 1e-6, (float(ours), ref)
  np.testing.assert_allclose(add_noise(x0, eps, tj, schedule), x_t_ref, rtol=0, atol=1e-6)


def test_matches_diffusers_add_noise_and_velocity():
  """`add_noise` and `v_target` are the scheduler's own (the training script calls these)."""
  x0, eps, _, t, _ = draws(1)
  ref = CogVideoXDDIMScheduler(snr_shift_scale=3.0, rescale_betas_zero_snr=True,
                               prediction_type="v_prediction", timestep_spacing="trailing")
  tt = torch.tensor(t)
  x_t = ref.add_noise(torch.tensor(x0), torch.tensor(eps), tt)
  v = ref.get_velocity(torch.tensor(x0), torch.tensor(eps), tt)
  s, tj = NoiseSchedule(), jnp.asarray(t)
  np.testing.assert_allclose(add_noise(x0, eps, tj, s), x_t.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(v_target(x0, eps, tj, s), v.numpy(), rtol=0, atol=1e-6)


def test_diffusion_loss_end_to_end():
  """The whole loss with a toy denoiser, drawn t and ε, and bf16 latents in: still float32."""
  schedule = NoiseSchedule()
  x0, _, _, _, w = draws(2)
  text = np.random.default_rng(3).standard_normal((SHAPE[0], 5, 7)).astype(np.float32)
  bcast = lambda a: a[:, None, None, None, None]
  denoise = lambda x, e, t: 0.5 * x + bcast(e.mean((1, 2))) * bcast(t) / 999
  key = jax.random.key(7)

  @jax.jit
  def run(k):
    loss, aux = diffusion_loss(denoise, jnp.asarray(x0), jnp.asarray(text), jnp.asarray(w), k,
                               schedule)
    loss16, _ = diffusion_loss(denoise, jnp.asarray(x0, jnp.bfloat16), jnp.asarray(text),
                               jnp.asarray(w), k, schedule)
    return loss, aux, loss16, draw_timesteps_and_noise(k, SHAPE)

  loss, aux, loss16, (t, eps) = run(key)
  np.testing.assert_array_equal(aux["timesteps"], t)
  assert 0 <= int(t.min()) and int(t.max()) < 1000
  a = schedule.alphas_cumprod[np.asarray(t)][:, None, None, None, None]
  x_t = np.sqrt(a) * np.float64(x0) + np.sqrt(1 - a) * np.float64(eps)
  v_pred = 0.5 * x_t + np.float64(text).mean((1, 2))[:, None, None, None, None] * (
      np.asarray(t)[:, None, None, None, None] / 999)
  ref, _ = x0_form_loss(x0, eps, v_pred, np.asarray(t), w, schedule.alphas_cumprod)
  assert abs(float(loss) - ref) / ref < 1e-6
  unweighted = v_form_loss(x0, eps, v_pred, np.asarray(t), np.ones(SHAPE[0]),
                           schedule.alphas_cumprod)
  assert abs(float(aux["mse"]) - unweighted) / unweighted < 1e-6
  assert loss16.dtype == jnp.float32 and abs(float(loss16) - ref) / ref < 2e-2


def test_weight_modes():
  rewards = jnp.asarray([0.9, 0.67, 0.05, 0.9, 0.2, 0.0])
  real = jnp.asarray([False, False, False, False, False, True])
  np.testing.assert_allclose(sample_weights(rewards, real), [0.9, 0.67, 0.05, 0.9, 0.2, 1.0])
  np.testing.assert_allclose(sample_weights(rewards, real, real_weight=0.5)[-1], 0.5)
  np.testing.assert_array_equal(sample_weights(rewards, real, mode="rejection"),
                                [1, 0, 0, 1, 0, 1])
  np.testing.assert_array_equal(
      sample_weights(rewards, real, mode="rejection",
                     all_good=jnp.asarray([0, 1, 0, 0, 0, 0], bool)), [0, 1, 0, 0, 0, 1])
  np.testing.assert_array_equal(sample_weights(rewards, real, mode="plain"), np.ones(6))
  syn = np.array([0.9, 0.67, 0.05, 0.9, 0.2])
  mean1 = sample_weights(rewards, real, transform="mean1")
  np.testing.assert_allclose(mean1, [*(syn / syn.mean()), 1.0], rtol=1e-6)
  np.testing.assert_allclose(np.mean(mean1[:5]), 1.0, rtol=1e-6)
  for beta in (1.0, 5.0, 200.0):  # large β: the max shift keeps exp finite
    e = np.exp(beta * (syn - syn.max()))
    got = sample_weights(rewards, real, transform="exp", beta=beta)
    np.testing.assert_allclose(got, [*(e / e.mean()), 1.0], rtol=1e-5, atol=1e-30)
  # Without is_real every sample is synthetic.
  np.testing.assert_allclose(sample_weights(rewards), rewards)
  with pytest.raises(ValueError, match="mode"):
    sample_weights(rewards, mode="dpo")
  with pytest.raises(ValueError, match="transform"):
    sample_weights(rewards, transform="softmax")


def test_weights_scale_the_loss():
  """Zero weight drops a sample's error; the mean is over the batch, not the kept samples."""
  x0, eps, v_pred, t, _ = draws(4)
  v = v_target(x0, eps, jnp.asarray(t), NoiseSchedule())
  w = jnp.asarray([1, 0, 0, 0, 0, 0], jnp.float32)
  per0 = float(jnp.mean(jnp.square(jnp.asarray(v_pred[0]) - v[0])))
  assert float(weighted_v_mse(jnp.asarray(v_pred), v, w)) == pytest.approx(per0 / 6, rel=1e-6)


class ToyDenoiser(nnx.Module):
  """A small NNX stand-in for the transformer (same call signature), so the gradient test is cheap;
  the transformer itself is exercised through the same `denoise_fn` path by the sampler tests."""

  def __init__(self, channels, text_dim, rngs):
    self.mix = nnx.Linear(channels, channels, rngs=rngs)
    self.text = nnx.Linear(text_dim, channels, rngs=rngs)

  def __call__(self, x, text_embeds, timesteps):
    h = jnp.einsum("BFCHW,CD->BFDHW", x, self.mix.kernel[...])
    h = h + self.mix.bias[...][:, None, None]
    cond = self.text(text_embeds.mean(1)) * (timesteps[:, None] / 1000)
    return jnp.tanh(h) + cond[:, None, :, None, None]


def test_gradient_through_nnx_module():
  """The loss differentiates through an NNX module passed as denoise_fn (how train.py uses it)."""
  model = ToyDenoiser(SHAPE[2], 7, nnx.Rngs(0))
  rng = np.random.default_rng(5)
  x0 = jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32))
  text = jnp.asarray(rng.standard_normal((SHAPE[0], 5, 7)).astype(np.float32))
  w = sample_weights(jnp.asarray([0.9, 0.2, 0.05, 0.67, 0.9, 1.0]))

  @nnx.jit
  def step(m, key):
    return nnx.value_and_grad(lambda m: diffusion_loss(m, x0, text, w, key), has_aux=True)(m)

  (loss, aux), grads = step(model, jax.random.key(0))
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert np.isfinite(float(loss)) and float(loss) > 0 and aux["per_sample_mse"].shape == (6,)
  assert len(leaves) == 4
  assert all(np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0 for g in leaves)
  # Against finite differences along the gradient (float32, so a loose tolerance).
  flat, unravel = jax.flatten_util.ravel_pytree(nnx.state(model, nnx.Param))
  gflat, _ = jax.flatten_util.ravel_pytree(nnx.state(grads, nnx.Param))
  graphdef, _ = nnx.split(model)
  f = jax.jit(lambda p: diffusion_loss(nnx.merge(graphdef, unravel(p)), x0, text, w,
                                       jax.random.key(0))[0])
  eps = 1e-2 / float(jnp.linalg.norm(gflat))
  fd = (f(flat + eps * gflat) - f(flat - eps * gflat)) / (2 * eps)
  assert float(fd) == pytest.approx(float(gflat @ gflat), rel=1e-2)

"""DDIM and DPM++ sampling loops against diffusers' CogVideoX schedulers and `CogVideoXPipeline`."""

import math

import diffusers.schedulers.scheduling_dpm_cogvideox as dpm_module
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline,
                       CogVideoXTransformer3DModel)

from lift_jax.diffusion import NoiseSchedule, guidance_scales, sample, samplers
from lift_jax.models import cogvideox
from tests.reference import perturb_, rel_err, save_sharded

SCHEDULER_CLASSES = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
RANDN_TENSOR = dpm_module.randn_tensor


def make_scheduler(sampler, snr):
  return SCHEDULER_CLASSES[sampler](
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, snr_shift_scale=snr,
      rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
      set_alpha_to_one=True, clip_sample=False)


class NoiseRecorder:
  """Records what `randn_tensor` returns inside the DPM scheduler; `used` keeps, per step, the draw
  the step actually used (its last one: the second draw replaces the first on 2nd-order steps)."""

  def __init__(self, monkeypatch):
    self.draws, self.used = [], []

    def record(*args, **kwargs):
      out = RANDN_TENSOR(*args, **kwargs)
      self.draws.append(out.clone())
      return out

    monkeypatch.setattr(dpm_module, "randn_tensor", record)

  def end_step(self, *_):
    self.used.append(self.draws[-1])
    return {}

  def noise(self):
    return jnp.asarray(torch.stack(self.used).numpy())


# A cheap nonlinear stand-in for the transformer (same math in torch and JAX) to run many schedules.
W = np.random.default_rng(1).standard_normal(7).astype(np.float32) * 0.1


def toy_torch(x, e, t):
  tt = t.float()[:, None, None, None, None] / 1000
  return 0.7 * x + torch.tanh(x * tt) + (e @ torch.tensor(W)).mean(1)[:, None, None, None, None]


def toy_jax(x, e, t):
  tt = t.astype(jnp.float32)[:, None, None, None, None] / 1000
  return 0.7 * x + jnp.tanh(x * tt) + (e @ jnp.asarray(W)).mean(1)[:, None, None, None, None]


def torch_loop(denoise, scheduler, n, x, cond, uncond, g, dynamic, recorder=None):
  """The pipeline's denoising loop (pipeline_cogvideox.py), for the toy model."""
  scheduler.set_timesteps(n)
  lat, emb, old = torch.tensor(x), torch.cat([torch.tensor(uncond), torch.tensor(cond)]), None
  ts = scheduler.timesteps
  for i, t in enumerate(ts):
    v = denoise(torch.cat([lat] * 2), emb, t.expand(2)).float()
    scale = 1 + g * ((1 - math.cos(math.pi * ((n - t.item()) / n) ** 5.0)) / 2) if dynamic else g
    v_uncond, v_cond = v.chunk(2)
    v = v_uncond + scale * (v_cond - v_uncond)
    if isinstance(scheduler, CogVideoXDPMScheduler):
      lat, old = scheduler.step(v, old, t, ts[i - 1] if i > 0 else None, lat, return_dict=False)
      recorder.end_step()
    else:
      lat = scheduler.step(v, t, lat, return_dict=False)[0]
  return lat


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("snr", [3.0, 1.0])
def test_toy_loops_many_schedules(sampler, snr, monkeypatch):
  """Every step count exercises other coefficients: 1 and 2 steps (only first-order DPM steps), 30
  (prev_t = t - 33 is not the next timestep), 50 (the default), with and without dynamic CFG."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 3, 4, 4, 6)).astype(np.float32)
  cond, uncond = (rng.standard_normal((1, 5, 7)).astype(np.float32) for _ in range(2))
  errs = {}
  for n, dynamic in [(1, False), (2, True), (7, False), (30, True), (50, False), (50, True)]:
    recorder = NoiseRecorder(monkeypatch)
    ref = torch_loop(toy_torch, make_scheduler(sampler, snr), n, x, cond, uncond, 6.0, dynamic,
                     recorder)
    noise = recorder.noise() if sampler == "dpm" else None
    ours = sample(toy_jax, jnp.asarray(x), jnp.asarray(cond), jnp.asarray(uncond),
                  schedule=NoiseSchedule(snr_shift_scale=snr), num_steps=n, guidance_scale=6.0,
                  use_dynamic_cfg=dynamic, sampler=sampler, noise=noise)
    errs[n, dynamic] = rel_err(ours, ref)
  assert max(errs.values()) < 1e-5, errs


def test_dynamic_cfg_values():
  """reference/cogvideox-port.md §5.4: N=50, g=6."""
  g = guidance_scales(NoiseSchedule().timesteps(50), 6.0, True)
  np.testing.assert_allclose(g[:5], [2.2915, 2.5435, 6.9744, 6.4204, 2.7881], atol=1e-4)
  np.testing.assert_allclose(g[-5:], [6.8644, 1.0636, 1.0, 1.0, 1.1234], atol=1e-4)
  assert (guidance_scales(NoiseSchedule().timesteps(50), 6.0, False) == 6.0).all()


def test_step_table_edge_values():
  """The infinities at t=999 and at the last step resolve as in torch (no NaN, exact limits)."""
  table = samplers.step_table(NoiseSchedule(), 50, "dpm")
  cols = dict(zip(samplers.DPM_COLUMNS, table.T))
  assert cols["m1"][0] == 0.0 and cols["m1"][-1] == 0.0
  assert cols["m2"][-1] == -1.0 and cols["m_noise"][-1] == 0.0
  assert cols["m3"][0] == cols["m3"][1] == 1.0 and cols["m4"][1] == 0.0  # r = inf at step 1
  assert cols["m4"][2] != 0.0
  ddim = dict(zip(samplers.DDIM_COLUMNS, samplers.step_table(NoiseSchedule(), 50, "ddim").T))
  assert ddim["a"][-1] == 0.0 and ddim["b"][-1] == 1.0


# ---- The real thing: a tiny random CogVideoX transformer through diffusers' pipeline. ----


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
  """{name: (torch module, our module)} for the 2B layout (sin-cos) and the 5B layout (RoPE)."""
  out = {}
  for name, extra in [("2b", {}), ("5b", dict(use_rotary_positional_embeddings=True))]:
    torch.manual_seed(0)
    ref = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=32,
        time_embed_dim=32, max_text_seq_length=8, sample_height=8, sample_width=12,
        sample_frames=9, **extra)
    perturb_(ref).eval()
    folder = save_sharded(ref, str(tmp_path_factory.mktemp(name)), dict(ref.config))
    out[name] = (ref, cogvideox.load_transformer(folder, dtype="float32"))
  return out


def pipeline_latents(ref_model, scheduler, x, cond, uncond, *, steps, guidance, dynamic,
                     callback=None):
  """`CogVideoXPipeline.__call__` itself: no VAE/T5 needed with embeddings in and latents out."""
  pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=ref_model,
                           scheduler=scheduler)
  pipe.set_progress_bar_config(disable=True)
  with torch.no_grad():
    out = pipe(prompt_embeds=torch.tensor(cond), negative_prompt_embeds=torch.tensor(uncond),
               latents=torch.tensor(x), num_inference_steps=steps, guidance_scale=guidance,
               use_dynamic_cfg=dynamic, output_type="latent", return_dict=False,
               callback_on_step_end=callback)[0]
  return out


@pytest.mark.parametrize("layout,sampler,snr,dynamic", [
    ("2b", "ddim", 3.0, False),
    ("2b", "dpm", 3.0, True),
    ("5b", "dpm", 1.0, False),
])
def test_pipeline_parity(tiny_models, layout, sampler, snr, dynamic, monkeypatch):
  ref_model, ours_model = tiny_models[layout]
  rng = np.random.default_rng(3)
  x = rng.standard_normal((1, 3, 16, 8, 12)).astype(np.float32)  # 9 frames -> 3 latent frames
  cond, uncond = (rng.standard_normal((1, 8, 32)).astype(np.float32) for _ in range(2))
  recorder = NoiseRecorder(monkeypatch)
  ref = pipeline_latents(ref_model, make_scheduler(sampler, snr), x, cond, uncond, steps=5,
                         guidance=6.0, dynamic=dynamic,
                         callback=recorder.end_step if sampler == "dpm" else None)
  noise = recorder.noise() if sampler == "dpm" else None
  ours = sample(ours_model, jnp.asarray(x), jnp.asarray(cond), jnp.asarray(uncond),
                schedule=NoiseSchedule(snr_shift_scale=snr), num_steps=5, guidance_scale=6.0,
                use_dynamic_cfg=dynamic, sampler=sampler, noise=noise)
  err = rel_err(ours, ref)
  print(f"{layout} {sampler} dynamic={dynamic}: rel err {err:.2e}")
  assert err < 1e-4


def test_module_loop_compiles_once_and_keys(tiny_models):
  """The NNX module enters as (graphdef, state): new guidance scales or keys reuse the program;
  DPM without injected noise draws from `key` deterministically."""
  _, model = tiny_models["2b"]
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((1, 3, 16, 8, 12)).astype(np.float32))
  cond, uncond = (jnp.asarray(rng.standard_normal((1, 8, 32)).astype(np.float32))
                  for _ in range(2))
  run = lambda g, key: sample(model, x, cond, uncond, num_steps=3, guidance_scale=g,
                              sampler="dpm", key=key)
  a = run(6.0, jax.random.key(0))
  size = samplers._denoise_loop._cache_size()
  b = run(4.5, jax.random.key(0))
  c = run(6.0, jax.random.key(1))
  assert samplers._denoise_loop._cache_size() == size
  np.testing.assert_array_equal(run(6.0, jax.random.key(0)), a)
  assert np.isfinite(np.asarray(a)).all()
  assert not np.allclose(a, b) and not np.allclose(a, c)
  # No CFG: guidance 1 runs the conditional batch alone.
  d = sample(model, x, cond, None, num_steps=3, guidance_scale=1.0, sampler="ddim")
  assert d.shape == x.shape and np.isfinite(np.asarray(d)).all()


def test_bad_arguments():
  x, e = jnp.zeros((1, 2, 4, 2, 2)), jnp.zeros((1, 3, 7))
  with pytest.raises(ValueError, match="uncond_embeds"):
    sample(toy_jax, x, e, None, num_steps=2, guidance_scale=6.0)
  with pytest.raises(ValueError, match="key"):
    sample(toy_jax, x, e, e, num_steps=2, sampler="dpm")
  with pytest.raises(ValueError, match="noise has shape"):
    sample(toy_jax, x, e, e, num_steps=2, sampler="dpm", noise=jnp.zeros((3, *x.shape)))
  with pytest.raises(ValueError, match="sampler"):
    sample(toy_jax, x, e, e, num_steps=2, sampler="euler")

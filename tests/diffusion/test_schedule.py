"""The noise schedule and timesteps against diffusers' CogVideoX schedulers."""

import numpy as np
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from lift_jax.diffusion import NoiseSchedule
from lift_jax.diffusion.schedule import torch_linspace

SCHEDULERS = [CogVideoXDDIMScheduler, CogVideoXDPMScheduler]
# The CogVideoX-2b / -5b `scheduler_config.json` (they differ only in snr_shift_scale).
HUB_CONFIG = {"_class_name": "CogVideoXDDIMScheduler", "_diffusers_version": "0.30.0.dev0",
              "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "clip_sample": False, "clip_sample_range": 1.0, "num_train_timesteps": 1000,
              "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
              "sample_max_value": 1.0, "set_alpha_to_one": True, "snr_shift_scale": 3.0,
              "steps_offset": 0, "timestep_spacing": "trailing", "trained_betas": None}


def reference(cls, **overrides):
  return cls(**{k: v for k, v in {**HUB_CONFIG, **overrides}.items() if not k.startswith("_")})


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("preset,snr", [("cogvideox_2b", 3.0), ("cogvideox_5b", 1.0)])
def test_alphas_cumprod_and_timesteps(cls, preset, snr):
  ours = getattr(NoiseSchedule, preset)()
  ref = reference(cls, snr_shift_scale=snr)
  ac = ref.alphas_cumprod.numpy()
  assert ours.alphas_cumprod.dtype == ac.dtype == np.float64
  np.testing.assert_allclose(ours.alphas_cumprod, ac, rtol=0, atol=1e-12)
  assert ours.alphas_cumprod[-1] == 0.0
  assert ours.final_alpha_cumprod == float(ref.final_alpha_cumprod)
  for n in (1, 2, 5, 7, 30, 50, 100, 250, 1000):
    ref.set_timesteps(n)
    np.testing.assert_array_equal(ours.timesteps(n), ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.prev_timesteps(n), ref.timesteps.numpy() - 1000 // n)


def test_reference_values():
  """The table in reference/cogvideox-port.md §5.1."""
  a2, a5 = NoiseSchedule.cogvideox_2b().alphas_cumprod, NoiseSchedule.cogvideox_5b().alphas_cumprod
  for t, v2, v5 in [(0, 0.99745433, 0.99915), (499, 0.095969562, 0.24235917),
                    (979, 2.719436e-05, 8.5787843e-05), (999, 0.0, 0.0)]:
    np.testing.assert_allclose([a2[t], a5[t]], [v2, v5], rtol=1e-7)
  assert NoiseSchedule().timesteps(50).tolist() == list(range(999, 0, -20))


@pytest.mark.parametrize("overrides", [
    dict(beta_schedule="linear", rescale_betas_zero_snr=False),
    dict(beta_schedule="squaredcos_cap_v2", snr_shift_scale=1.0),
    dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False),
    dict(timestep_spacing="linspace"),
])
def test_other_settings(overrides):
  """float32 schedules (torch accumulates their cumprod in float64) and the other spacings."""
  ours = NoiseSchedule.from_diffusers_config({**HUB_CONFIG, **overrides})
  ref = reference(CogVideoXDDIMScheduler, **overrides)
  ac = ref.alphas_cumprod.numpy()
  assert ours.alphas_cumprod.dtype == ac.dtype
  np.testing.assert_allclose(ours.alphas_cumprod, ac, rtol=0, atol=1e-6)
  assert ours.final_alpha_cumprod == pytest.approx(float(ref.final_alpha_cumprod), abs=1e-7)
  for n in (1, 7, 50):
    ref.set_timesteps(n)
    np.testing.assert_array_equal(ours.timesteps(n), ref.timesteps.numpy())


def test_torch_linspace_bitwise():
  for n, dt, tdt in [(1000, np.float64, torch.float64), (1000, np.float32, torch.float32),
                     (999, np.float32, torch.float32), (2, np.float64, torch.float64)]:
    ref = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n, dtype=tdt).numpy()
    np.testing.assert_array_equal(torch_linspace(0.00085 ** 0.5, 0.012 ** 0.5, n, dt), ref)


def test_from_diffusers_config():
  assert NoiseSchedule.from_diffusers_config(HUB_CONFIG) == NoiseSchedule.cogvideox_2b()
  assert (NoiseSchedule.from_diffusers_config({**HUB_CONFIG, "snr_shift_scale": 1.0})
          == NoiseSchedule.cogvideox_5b())
  # Missing fields take diffusers' constructor defaults, as from_pretrained would.
  sparse = {k: v for k, v in HUB_CONFIG.items() if k not in ("timestep_spacing",)}
  assert NoiseSchedule.from_diffusers_config(sparse).timestep_spacing == "leading"
  with pytest.raises(ValueError, match="prediction_type"):
    NoiseSchedule.from_diffusers_config({**HUB_CONFIG, "prediction_type": "epsilon"})
  with pytest.raises(ValueError, match="bogus"):
    NoiseSchedule.from_diffusers_config({**HUB_CONFIG, "bogus": 1})
  with pytest.raises(ValueError, match="trained_betas"):
    NoiseSchedule.from_diffusers_config({**HUB_CONFIG, "trained_betas": [0.1] * 1000})
  with pytest.raises(ValueError, match="beta_schedule"):
    NoiseSchedule(beta_schedule="cosine")


def test_bad_step_counts():
  s = NoiseSchedule()
  with pytest.raises(ValueError, match="num_steps"):
    s.timesteps(0)
  with pytest.raises(ValueError, match="rounding"):
    s.timesteps(61)  # np.arange overshoots: diffusers would add a step at t=-1


def test_hashable_and_frozen():
  s = NoiseSchedule()
  assert hash(s) == hash(NoiseSchedule())
  with pytest.raises(Exception):
    s.snr_shift_scale = 1.0
  with pytest.raises(ValueError):
    s.alphas_cumprod[0] = 1.0

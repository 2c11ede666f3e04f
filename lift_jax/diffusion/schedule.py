"""The CogVideoX noise schedule, as diffusers' CogVideoX DDIM and DPM schedulers build it.

Everything here is host-side NumPy: the schedule is a function of a few numbers, so it is computed
once, in the same precision and operation order as the PyTorch reference (float64 for the
`scaled_linear` betas every CogVideoX checkpoint uses), and enters jitted code as small arrays.
The only known differences are in the last bit: torch's vectorised float64 sqrt is not always
correctly rounded (≈1e-16 on ᾱ).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from typing import Any

import numpy as np

from lift_jax import layers

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
# Scheduler config keys that do not change the schedule or the step of the CogVideoX schedulers
# (their `step` never clips nor thresholds, and `eta` is ignored).
_IGNORED_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
                 "clip_sample", "clip_sample_range", "sample_max_value", "thresholding",
                 "dynamic_thresholding_ratio"}


def torch_linspace(start: float, end: float, steps: int, dtype) -> np.ndarray:
  """`torch.linspace` bit for bit: it fills the two halves from opposite ends with fused
  multiply-adds (one rounding), unlike NumPy. The fma is done exactly in rationals."""
  dtype = np.dtype(dtype)
  start, end = dtype.type(start), dtype.type(end)
  if steps == 1:
    return np.array([start], dtype)
  step = Fraction(float((end - start) / dtype.type(steps - 1)))
  start, end = Fraction(float(start)), Fraction(float(end))
  vals = [start + step * i if i < steps // 2 else end - step * (steps - 1 - i)
          for i in range(steps)]
  return np.array([float(v) for v in vals], np.float64).astype(dtype)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
  """diffusers' `betas_for_alpha_bar(n)` (cosine), in Python floats then float32."""
  f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)], np.float32)


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
  """Shifts and scales √ᾱ so that ᾱ[-1] = 0 and ᾱ[0] is unchanged (arXiv 2305.08891, Alg. 1)."""
  r = np.sqrt(alphas_cumprod)
  r0, rT = r[0].copy(), r[-1].copy()
  r = r - rT
  r = r * (r0 / (r0 - rT))
  return r ** 2


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """A CogVideoX scheduler config (diffusers `scheduler_config.json` field names)."""

  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  snr_shift_scale: float = 3.0
  rescale_betas_zero_snr: bool = True
  set_alpha_to_one: bool = True
  timestep_spacing: str = "trailing"
  steps_offset: int = 0
  prediction_type: str = "v_prediction"

  def __post_init__(self):
    if self.beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f"beta_schedule={self.beta_schedule!r}: expected one of {BETA_SCHEDULES}")
    if self.timestep_spacing not in TIMESTEP_SPACINGS:
      raise ValueError(f"timestep_spacing={self.timestep_spacing!r}: expected one of "
                       f"{TIMESTEP_SPACINGS}")
    if self.prediction_type != "v_prediction":
      raise ValueError(f"prediction_type={self.prediction_type!r}: CogVideoX models predict "
                       "'v_prediction', the only type supported")
    if self.num_train_timesteps < 2:
      raise ValueError(f"num_train_timesteps={self.num_train_timesteps}: expected >= 2")

  @classmethod
  def cogvideox_2b(cls, **kw) -> "NoiseSchedule":
    return cls(**kw)

  @classmethod
  def cogvideox_5b(cls, **kw) -> "NoiseSchedule":
    """Also CogVideoX 1.5: the same schedule without the SNR shift."""
    return cls(**{"snr_shift_scale": 1.0, **kw})

  @classmethod
  def from_diffusers_config(cls, config: dict[str, Any]) -> "NoiseSchedule":
    """From a `scheduler/scheduler_config.json` dict; unsupported values raise, naming the field."""
    kwargs = layers.config_fields(config, what="scheduler", config_class=cls,
                                  fixed={"trained_betas": None}, ignored=_IGNORED_KEYS,
                                  unknown="raise")
    # diffusers' constructor defaults differ from ours (e.g. 'leading', no zero-SNR): a field the
    # file leaves out takes the diffusers default, as `from_pretrained` would.
    defaults = dict(timestep_spacing="leading", rescale_betas_zero_snr=False,
                    prediction_type="epsilon")
    return cls(**{**defaults, **kwargs})

  @functools.cached_property
  def _alphas_cumprod(self) -> np.ndarray:
    n = self.num_train_timesteps
    if self.beta_schedule == "scaled_linear":
      betas = torch_linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n, np.float64) ** 2
    elif self.beta_schedule == "linear":
      betas = torch_linspace(self.beta_start, self.beta_end, n, np.float32)
    else:
      betas = _cosine_betas(n)
    # torch accumulates a float32 cumprod in float64 and rounds each partial product.
    ac = np.cumprod((1.0 - betas).astype(np.float64)).astype(betas.dtype)
    s = self.snr_shift_scale
    ac = ac / (s + (1 - s) * ac)
    if self.rescale_betas_zero_snr:
      ac = rescale_zero_terminal_snr(ac)
    ac.setflags(write=False)
    return ac

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """ᾱ_t for t = 0..T-1, read-only: float64 for scaled_linear, else float32, as in diffusers."""
    return self._alphas_cumprod

  @property
  def final_alpha_cumprod(self) -> float:
    """ᾱ used past the last step (prev_t < 0)."""
    return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

  def alpha_at(self, t) -> np.ndarray:
    """ᾱ_t in float64, with `final_alpha_cumprod` for t < 0 (diffusers' prev-timestep rule)."""
    t = np.asarray(t, np.int64)
    ac = np.asarray(self.alphas_cumprod, np.float64)
    return np.where(t >= 0, ac[np.clip(t, 0, None)], self.final_alpha_cumprod)

  def timesteps(self, num_steps: int) -> np.ndarray:
    """The inference timesteps, high to low (int64), as `set_timesteps(num_steps)`."""
    T = self.num_train_timesteps
    if not 1 <= num_steps <= T:
      raise ValueError(f"num_steps={num_steps}: expected 1..{T}")
    if self.timestep_spacing == "linspace":
      ts = np.linspace(0, T - 1, num_steps).round()[::-1].copy().astype(np.int64)
    elif self.timestep_spacing == "leading":
      ts = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1].copy().astype(np.int64)
      ts += self.steps_offset
    else:
      ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
    if len(ts) != num_steps or ts.min() < 0:
      # Float steps in np.arange overshoot for some counts (61, 103, ...): diffusers then runs an
      # extra step at t=-1, which reads ᾱ[-1] = ᾱ[T-1] and corrupts the result.
      raise ValueError(f"num_steps={num_steps}: {self.timestep_spacing!r} spacing gives "
                       f"{len(ts)} timesteps down to {ts.min()} (a diffusers rounding bug); "
                       "choose another step count")
    return ts

  def prev_timesteps(self, num_steps: int) -> np.ndarray:
    """The t each step moves to: `t - T // num_steps`, not the next entry of `timesteps` (a
    diffusers quirk that matters when num_steps does not divide T); negative means "past the end".
    """
    return self.timesteps(num_steps) - self.num_train_timesteps // num_steps

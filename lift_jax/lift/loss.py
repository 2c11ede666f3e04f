"""The LiFT reward-weighted diffusion loss (arXiv 2412.04814 §3.4) and its per-sample weights.

LiFT's `train.py` computes, per sample, `score · mean((1/(1−ᾱ_t))·(x̂0 − x0)²)` with
x̂0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂. Since x̂0 − x0 = −√(1−ᾱ_t)·(v̂ − v), that is exactly
`score · mean((v̂ − v)²)`; we compute the v form, which avoids the ~390× factor near t=0.
Everything here is a pure function of arrays, in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lift_jax.diffusion.schedule import NoiseSchedule

MODES = ("rwl", "rejection", "plain")
TRANSFORMS = ("raw", "mean1", "exp")
# The reward of "Good" on all three dimensions (paper Eq. 2: mean of Good=0.9); no other label
# triple reaches it, so it identifies the samples rejection sampling keeps.
ALL_GOOD_REWARD = 0.9


def _per_sample(a: jax.Array, ndim: int) -> jax.Array:
  """[B] -> [B, 1, ..., 1], to broadcast a per-sample scalar over a `ndim`-d batch."""
  return a.reshape(a.shape + (1,) * (ndim - 1))


def schedule_tables(schedule: NoiseSchedule) -> tuple[jax.Array, jax.Array]:
  """(√ᾱ, √(1−ᾱ)) for t = 0..T-1, in float64 on the host then float32."""
  ac = np.asarray(schedule.alphas_cumprod, np.float64)
  return jnp.asarray(np.sqrt(ac), jnp.float32), jnp.asarray(np.sqrt(1 - ac), jnp.float32)


def add_noise(x0: jax.Array, noise: jax.Array, timesteps: jax.Array,
              schedule: NoiseSchedule) -> jax.Array:
  """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (`scheduler.add_noise`), per-sample t; float32."""
  sa, sb = schedule_tables(schedule)
  sa, sb = (_per_sample(s[timesteps], x0.ndim) for s in (sa, sb))
  return sa * x0.astype(jnp.float32) + sb * noise.astype(jnp.float32)


def v_target(x0: jax.Array, noise: jax.Array, timesteps: jax.Array,
             schedule: NoiseSchedule) -> jax.Array:
  """v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (`scheduler.get_velocity`), per-sample t; float32."""
  sa, sb = schedule_tables(schedule)
  sa, sb = (_per_sample(s[timesteps], x0.ndim) for s in (sa, sb))
  return sa * noise.astype(jnp.float32) - sb * x0.astype(jnp.float32)


def per_sample_mse(v_pred: jax.Array, v_true: jax.Array) -> jax.Array:
  """mean over everything but the batch axis of (v̂ − v)², float32 `[B]`."""
  err = jnp.square(v_pred.astype(jnp.float32) - v_true.astype(jnp.float32))
  return err.reshape(err.shape[0], -1).mean(axis=1)


def weighted_v_mse(v_pred: jax.Array, v_true: jax.Array, weights: jax.Array) -> jax.Array:
  """The batch loss: mean_i w_i·mean((v̂_i − v_i)²), a float32 scalar.

  The mean is over the whole batch (weight-0 samples included), as LiFT's `train.py` does: a
  rejected sample shrinks the step rather than being renormalised away.
  """
  return jnp.mean(weights.astype(jnp.float32) * per_sample_mse(v_pred, v_true))


def sample_weights(rewards: jax.Array, is_real: jax.Array | None = None, *, mode: str = "rwl",
                   transform: str = "raw", beta: float = 1.0, real_weight: float | None = 1.0,
                   all_good: jax.Array | None = None) -> jax.Array:
  """Per-sample loss weights `[B]` (float32).

  mode:
    "rwl"        reward-weighted learning (the paper): synthetic samples weigh their reward;
    "rejection"  the paper's ablation: 1 if all three labels are Good, else 0 (`all_good`, or
                 reward ≥ 0.9, which only Good/Good/Good reaches);
    "plain"      ordinary fine-tuning: every sample weighs 1 (rewards and λ ignored).
  Real videos (`is_real`) weigh `real_weight` (λ, 1 in the paper) in "rwl" and "rejection";
  `real_weight=None` lets them weigh their stored reward, which is λ as the prepare stage wrote it
  (the training job's default: λ is set once, in the loop config, and travels with the data).
  transform ("rwl" only): "raw" (the paper), "mean1" (r / mean r) or "exp" (e^{βr} / mean e^{βr}),
  the means taken over the synthetic samples given here: pass the whole data set's rewards for a
  fixed normalisation, or a batch's for a per-batch one.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}")
  if transform not in TRANSFORMS:
    raise ValueError(f"transform={transform!r}: expected one of {TRANSFORMS}")
  r = jnp.asarray(rewards, jnp.float32)
  real = jnp.zeros(r.shape, bool) if is_real is None else jnp.asarray(is_real, bool)
  if mode == "plain":
    return jnp.ones(r.shape, jnp.float32)
  if mode == "rejection":
    good = r >= ALL_GOOD_REWARD - 1e-6 if all_good is None else jnp.asarray(all_good, bool)
    w = good.astype(jnp.float32)
  else:
    syn = (~real).astype(jnp.float32)
    count = jnp.maximum(syn.sum(), 1.0)
    if transform == "raw":
      w = r
    elif transform == "mean1":
      w = r / jnp.maximum((r * syn).sum() / count, jnp.finfo(jnp.float32).tiny)
    else:
      # Shift by the largest synthetic βr before exp: same ratio, no overflow.
      z = beta * r
      z = z - jnp.max(jnp.where(real, -jnp.inf, z))
      e = jnp.exp(z)
      w = e / ((e * syn).sum() / count)
  return jnp.where(real, r if real_weight is None else jnp.float32(real_weight), w)


def draw_timesteps_and_noise(key: jax.Array, shape: tuple[int, ...],
                             num_train_timesteps: int = 1000) -> tuple[jax.Array, jax.Array]:
  """t ~ U{0..T-1} per sample (int32 `[B]`) and ε ~ N(0, I) of `shape` (float32)."""
  k_t, k_eps = jax.random.split(key)
  t = jax.random.randint(k_t, (shape[0],), 0, num_train_timesteps, jnp.int32)
  return t, jax.random.normal(k_eps, shape, jnp.float32)


def diffusion_loss(denoise_fn: Callable, x0: jax.Array, text_embeds: jax.Array,
                   weights: jax.Array, key: jax.Array,
                   schedule: NoiseSchedule | None = None) -> tuple[jax.Array, dict]:
  """The LiFT training loss for one batch: (weighted loss, aux).

  denoise_fn(x_t, text_embeds, t) -> v̂ (e.g. the NNX transformer; differentiate with
  `nnx.value_and_grad(..., has_aux=True)`). x0: clean latents `[B,F,C,H,W]` (VAE sample × scaling
  factor). aux: "mse" (the unweighted batch mean, to log beside the weighted one),
  "per_sample_mse" `[B]` and "timesteps" `[B]`.
  """
  schedule = schedule or NoiseSchedule.cogvideox_2b()
  t, eps = draw_timesteps_and_noise(key, x0.shape, schedule.num_train_timesteps)
  x_t = add_noise(x0, eps, t, schedule)
  with jax.named_scope("denoise"):
    v_pred = denoise_fn(x_t.astype(x0.dtype), text_embeds, t)
  with jax.named_scope("loss"):
    mse = per_sample_mse(v_pred, v_target(x0, eps, t, schedule))
    loss = jnp.mean(weights.astype(jnp.float32) * mse)
  return loss, {"mse": mse.mean(), "per_sample_mse": mse, "timesteps": t}

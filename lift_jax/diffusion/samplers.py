"""DDIM and DPM-Solver++(2M)-SDE sampling with classifier-free guidance, as diffusers' CogVideoX.

The whole denoising loop is one `jax.lax.scan` inside one `jax.jit`. Everything that depends only
on the schedule (per-step coefficients, the dynamic guidance scale) is computed on the host in
float64, where the infinities at t=999 (ᾱ=0) and at the last step (ᾱ_prev=1) behave exactly as in
torch, then rounded to float32 and scanned over. So one compiled loop serves any guidance scale
and any schedule of the same length. Update arithmetic is float32 in the reference's order.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddim", "dpm")
# Per-step coefficient columns of `step_table`, in order.
DDIM_COLUMNS = ("sqrt_alpha", "sqrt_one_minus_alpha", "a", "b")
DPM_COLUMNS = ("sqrt_alpha", "sqrt_one_minus_alpha", "m1", "m2", "m3", "m4", "m_noise")


def step_table(schedule: NoiseSchedule, num_steps: int, sampler: str) -> np.ndarray:
  """Per-step update coefficients `[num_steps, len(columns)]` in float64.

  DDIM (η=0):  x̂0 = √ᾱ_t·x − √(1−ᾱ_t)·v;  x_prev = a·x + b·x̂0.
  DPM++(2M) SDE:  D = m3·x̂0 − m4·x̂0_old;  x_prev = m1·x − m2·D + m_noise·ε, where the first step
  and the last (prev_t < 0) are first order (m3=1, m4=0), as `CogVideoXDPMScheduler.step`.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
  ts = schedule.timesteps(num_steps)
  prev = schedule.prev_timesteps(num_steps)
  at, ap = schedule.alpha_at(ts), schedule.alpha_at(prev)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    cols = [np.sqrt(at), np.sqrt(1 - at)]
    if sampler == "ddim":
      a = np.sqrt((1 - ap) / (1 - at))
      cols += [a, np.sqrt(ap) - np.sqrt(at) * a]
    else:
      lam = lambda x: np.log(np.sqrt(x / (1 - x)))
      h = lam(ap) - lam(at)
      # ᾱ at the previous entry of the schedule ("t_back"); unused (NaN-safe) at step 0.
      back = np.concatenate([at[:1], at[:-1]])
      r = (lam(at) - lam(back)) / h
      second = (np.arange(len(ts)) > 0) & (prev >= 0)
      cols += [np.sqrt((1 - ap) / (1 - at)) * np.exp(-h), np.expm1(-2 * h) * np.sqrt(ap),
               np.where(second, 1 + 1 / (2 * r), 1.0), np.where(second, 1 / (2 * r), 0.0),
               np.sqrt(1 - ap) * np.sqrt(1 - np.exp(-2 * h))]
  table = np.stack(cols, axis=1)
  if not np.all(np.isfinite(table)):
    bad = sorted(set(np.nonzero(~np.isfinite(table))[0].tolist()))
    raise ValueError(f"{sampler} coefficients are not finite at steps {bad} (timesteps "
                     f"{ts[bad].tolist()}) for this schedule")
  return table


def guidance_scales(timesteps: np.ndarray, guidance_scale: float, use_dynamic_cfg: bool,
                    num_steps: int | None = None) -> np.ndarray:
  """The CFG scale per step. With `use_dynamic_cfg`, diffusers' (and SAT's) cosine ramp fed with the
  *timestep value* (999…), not the step index, so the scale is effectively pseudo-random; kept
  exactly for parity, computed with Python floats as the pipeline does."""
  n = num_steps or len(timesteps)
  if not use_dynamic_cfg:
    return np.full(len(timesteps), guidance_scale, np.float64)
  return np.array([1 + guidance_scale * ((1 - math.cos(math.pi * ((n - int(t)) / n) ** 5.0)) / 2)
                   for t in timesteps], np.float64)


def _split_denoiser(denoise_fn) -> tuple[Any, Any]:
  """(static part, array part): an NNX module travels as (graphdef, state) so the loop compiles
  once per model structure and the weights are arguments, not constants baked into the program."""
  if isinstance(denoise_fn, nnx.Module):
    return nnx.split(denoise_fn)
  return denoise_fn, None


def _merge_denoiser(static, state) -> Callable:
  if isinstance(static, nnx.GraphDef):
    return nnx.merge(static, state)
  return static


@functools.partial(jax.jit, static_argnames=("static", "sampler", "cfg", "injected"))
def _denoise_loop(static, state, latents, embeds, timesteps, table, guidance, noise, key, *,
                  sampler: str, cfg: bool, injected: bool):
  """The scan over steps; `noise` is `[N, *latents.shape]` if `injected`, else drawn from `key`."""
  dtype = latents.dtype
  n = timesteps.shape[0]

  def body(carry, xs):
    x, old_x0 = carry
    i, t, c, g = xs["i"], xs["t"], xs["c"], xs["g"]
    model = _merge_denoiser(static, state)
    inp = jnp.concatenate([x, x]) if cfg else x
    with jax.named_scope("denoise"):
      v = model(inp, embeds, jnp.broadcast_to(t, (inp.shape[0],))).astype(jnp.float32)
    if cfg:
      v_uncond, v_cond = jnp.split(v, 2)
      v = v_uncond + g * (v_cond - v_uncond)
    with jax.named_scope("update"):
      x32 = x.astype(jnp.float32)
      x0 = c[0] * x32 - c[1] * v
      if sampler == "ddim":
        new = c[2] * x32 + c[3] * x0
      else:
        eps = xs["noise"] if injected else jax.random.normal(jax.random.fold_in(key, i),
                                                             x.shape, dtype)
        d = c[4] * x0 - c[5] * old_x0
        new = c[2] * x32 - c[3] * d + c[6] * eps.astype(jnp.float32)
    return (new.astype(dtype), x0), None

  xs = dict(i=jnp.arange(n), t=timesteps, c=table, g=guidance)
  if injected:
    xs["noise"] = noise
  old = jnp.zeros(latents.shape, jnp.float32)
  (out, _), _ = jax.lax.scan(body, (latents, old), xs)
  return out


def sample(denoise_fn, latents: jax.Array, cond_embeds: jax.Array,
           uncond_embeds: jax.Array | None = None, *, schedule: NoiseSchedule | None = None,
           num_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
           sampler: str = "ddim", key: jax.Array | None = None,
           noise: jax.Array | None = None) -> jax.Array:
  """Runs the whole sampler from `latents` (the initial noise, `[B,F,C,H,W]`) and returns x0.

  denoise_fn(latents, text_embeds, timesteps[B]) -> v: an NNX module (weights become arguments of
  the one jitted loop) or a pure function. CFG runs when guidance_scale > 1 and `uncond_embeds` is
  given, as one batch `[uncond, cond]`. For "dpm", the per-step noise is `noise[i]`
  (`[num_steps, *latents.shape]`, the draw diffusers' step actually uses) or else drawn from `key`.
  The carried latents keep `latents.dtype` between steps (diffusers rounds them to the prompt
  dtype each step); the update itself is float32.
  """
  schedule = schedule or NoiseSchedule.cogvideox_2b()
  table = step_table(schedule, num_steps, sampler)
  ts = schedule.timesteps(num_steps)
  cfg = guidance_scale > 1.0 and uncond_embeds is not None
  if guidance_scale > 1.0 and uncond_embeds is None:
    raise ValueError(f"guidance_scale={guidance_scale} needs uncond_embeds (the negative prompt)")
  embeds = jnp.concatenate([uncond_embeds, cond_embeds]) if cfg else cond_embeds
  guidance = guidance_scales(ts, guidance_scale, use_dynamic_cfg, num_steps)
  injected = noise is not None
  if sampler == "dpm":
    if injected and tuple(noise.shape) != (len(ts), *latents.shape):
      raise ValueError(f"noise has shape {tuple(noise.shape)}; expected "
                       f"{(len(ts), *latents.shape)} (one draw per step)")
    if not injected and key is None:
      raise ValueError("the dpm sampler is stochastic: pass `key` or the per-step `noise`")
  else:
    noise, injected = None, False
  static, state = _split_denoiser(denoise_fn)
  key = key if key is not None else jax.random.key(0)
  return _denoise_loop(static, state, latents, embeds, jnp.asarray(ts, jnp.int32),
                       jnp.asarray(table, jnp.float32), jnp.asarray(guidance, jnp.float32),
                       noise, key, sampler=sampler, cfg=cfg, injected=injected)

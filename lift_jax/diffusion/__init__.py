"""Diffusion: the CogVideoX noise schedule and the samplers (DDIM, DPM-Solver++ 2M SDE) with CFG."""

from lift_jax.diffusion.samplers import SAMPLERS, guidance_scales, sample, step_table
from lift_jax.diffusion.schedule import NoiseSchedule, rescale_zero_terminal_snr

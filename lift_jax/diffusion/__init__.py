"""Diffusion: the CogVideoX noise schedule, the samplers (DDIM, DPM-Solver++ 2M SDE) with CFG, and
the text-to-video pipeline (T5 -> sampler -> VAE decode)."""

from lift_jax.diffusion.pipeline import (PipelinePaths, TextToVideo, draw_noise, load_pipeline,
                                         load_schedule, resolve_paths)
from lift_jax.diffusion.samplers import SAMPLERS, guidance_scales, sample, step_table
from lift_jax.diffusion.schedule import NoiseSchedule, rescale_zero_terminal_snr

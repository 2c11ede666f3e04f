"""LiFT: reward-weighted fine-tuning of CogVideoX (the loss; the rewards and trainer beside it)."""

from lift_jax.lift.loss import (add_noise, diffusion_loss, draw_timesteps_and_noise,
                                per_sample_mse, sample_weights, v_target, weighted_v_mse)

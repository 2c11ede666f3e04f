"""Reward-weighted fine-tuning of CogVideoX: the loss on top of the shared trainer core.

The step (`lift.train_core`: one `jax.jit` with explicit in/out shardings over the mesh and a
donated state, micro-batch accumulation, non-finite skip):
  weights = sample_weights(rewards, is_real, ...)              (paper: raw reward, λ for real)
  loss    = mean_i w_i · mean((v̂_i − v_i)²)                     (lift.loss.diffusion_loss)
  grads   averaged over micro-batches, clipped, AdamW           (optax)
Only the trainable subset (default: the transformer blocks, as the paper) has gradients and
optimizer state; the rest is a frozen, non-donated argument. The job around it is `lift.loop`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.lift import loss as loss_lib
from lift_jax.lift import transformer_lora
from lift_jax.lift.train_core import (OptimConfig, TrainerCore, abstract_put,  # noqa: F401
                                      abstract_state, init_state, learning_rate, make_optimizer,
                                      state_shardings, tree_where)
from lift_jax.parallel import mesh as mesh_lib

TRAINABLE = ("blocks", "full", "lora")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which samples count how much: see `lift.loss.sample_weights`. `real_weight` None (default):
  real videos weigh the λ the prepare stage stored as their reward; a number overrides it."""

  mode: str = "rwl"
  transform: str = "raw"
  beta: float = 1.0
  real_weight: float | None = None


def trainable_filter(name: str):
  """nnx filter for the trainable parameters: "blocks" (the paper), "full" or "lora"."""
  if name == "blocks":
    return nnx.All(nnx.Param, nnx.PathContains("blocks"))
  if name == "full":
    return nnx.Param
  if name == "lora":
    return transformer_lora.trainable_filter()
  raise ValueError(f"trainable={name!r}: expected one of {TRAINABLE}")


class Trainer(TrainerCore):
  """The CogVideoX transformer split for training (trainable | frozen), its loss and step.

  `state` is a plain pytree {"step", "params", "opt_state", "bad_steps"} (what checkpoints hold);
  `frozen` holds the non-trainable parameters. Batches are dicts of arrays with a leading global
  batch axis: latents [B,F,C,H,W], text_embeds [B,S,D], reward [B], is_real [B], all_good [B].
  """

  def __init__(self, model: nnx.Module, *, mesh: Mesh, optim: OptimConfig = OptimConfig(),
               loss: LossConfig = LossConfig(), schedule: NoiseSchedule | None = None,
               trainable: str = "blocks", accum_steps: int = 1, seed: int = 0,
               lora_rank: int = 64, lora_alpha: float = 64.0, rules=mesh_lib.DEFAULT_RULES):
    self.optim_config, self.loss_config = optim, loss
    self.schedule = schedule or NoiseSchedule.cogvideox_2b()
    self.trainable = trainable
    filt = trainable_filter(trainable)
    if trainable == "lora":
      transformer_lora.add_lora(model, rank=lora_rank, alpha=lora_alpha, seed=seed)
    super().__init__(model, filt, mesh=mesh, optim=optim, accum_steps=accum_steps, seed=seed,
                     rules=rules)

  def model(self, state: dict[str, Any], merge_lora: bool = True) -> nnx.Module:
    """The full NNX model with the state's trainable parameters (for sampling or export);
    LoRA factors are merged into the weights unless `merge_lora=False`."""
    model = self.merged(state)
    if self.trainable == "lora" and merge_lora:
      return transformer_lora.merge_lora(model)
    return model

  # ------------------------------------------------------------------------- loss

  def weights(self, batch) -> jax.Array:
    lc = self.loss_config
    return loss_lib.sample_weights(batch["reward"], batch["is_real"], mode=lc.mode,
                                   transform=lc.transform, beta=lc.beta,
                                   real_weight=lc.real_weight, all_good=batch.get("all_good"))

  def objective(self, model, batch, key):
    loss, aux = loss_lib.diffusion_loss(model, batch["latents"], batch["text_embeds"],
                                        self.weights(batch), key, self.schedule)
    return loss, {"loss": loss, "mse": aux["mse"]}

  def finish(self, grads, sums, batch):
    a = self.accum_steps
    if a > 1:
      grads, sums = jax.tree.map(lambda x: x / a, (grads, sums))
    real = batch["is_real"].astype(jnp.float32)
    w_real = jnp.sum(self.weights(batch) * real) / jnp.maximum(jnp.sum(real), 1.0)
    return grads, {**sums, "reward": jnp.mean(batch["reward"].astype(jnp.float32)),
                   "real_weight": w_real}


def batch_spec(batch: int, frames: int, channels: int, height: int, width: int, text_len: int,
               text_dim: int, dtype=jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract batch for AOT compilation and the memory plan."""
  sd = jax.ShapeDtypeStruct
  return {"latents": sd((batch, frames, channels, height, width), dtype),
          "text_embeds": sd((batch, text_len, text_dim), dtype),
          "reward": sd((batch,), jnp.float32), "is_real": sd((batch,), jnp.bool_),
          "all_good": sd((batch,), jnp.bool_)}

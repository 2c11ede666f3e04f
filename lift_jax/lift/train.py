"""Reward-weighted fine-tuning of CogVideoX: the train state, the jitted sharded step, the memory plan.

The step is one `jax.jit` with explicit in/out shardings over the mesh and a donated state:
  weights = sample_weights(rewards, is_real, ...)              (paper: raw reward, λ for real)
  loss    = mean_i w_i · mean((v̂_i − v_i)²)                     (lift.loss.diffusion_loss)
  grads   accumulated over micro-batches, clipped, AdamW        (optax)
A non-finite loss or gradient skips the update (parameters and optimizer state unchanged) and is
counted in the state, so training can halt with a clear message after too many bad steps.
Only the trainable subset (default: the transformer blocks, as the paper) has gradients and
optimizer state; the rest is a frozen, non-donated argument.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.lift import loss as loss_lib
from lift_jax.lift import transformer_lora
from lift_jax.parallel import mesh as mesh_lib

TRAINABLE = ("blocks", "full", "lora")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with global-norm clipping and linear warmup then cosine decay (the paper's settings)."""

  lr: float = 1e-5
  warmup_steps: int = 200
  total_steps: int = 10_000
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 1e-4
  clip_norm: float = 1.0
  final_lr_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which samples count how much: see `lift.loss.sample_weights`."""

  mode: str = "rwl"
  transform: str = "raw"
  beta: float = 1.0
  real_weight: float = 1.0


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
  warmup = max(cfg.warmup_steps, 0)
  decay = max(cfg.total_steps - warmup, 1)
  return optax.join_schedules([
      optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)),
      optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.final_lr_fraction),
  ], [warmup])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay))


def trainable_filter(name: str):
  """nnx filter for the trainable parameters: "blocks" (the paper), "full" or "lora"."""
  if name == "blocks":
    return nnx.All(nnx.Param, nnx.PathContains("blocks"))
  if name == "full":
    return nnx.Param
  if name == "lora":
    return transformer_lora.trainable_filter()
  raise ValueError(f"trainable={name!r}: expected one of {TRAINABLE}")


def state_shardings(tx: optax.GradientTransformation, mesh: Mesh, param_shardings,
                    params) -> dict[str, Any]:
  """Shardings of a train state {"step", "params", "opt_state", "bad_steps"}.

  Optimizer moments take their parameters' shardings explicitly: XLA would replicate `zeros_like`
  outputs (they do not depend on the sharded input's data). Counters are replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, abstract_opt, param_shardings,
                                 transform_non_params=lambda _: replicated)
  return {"step": replicated, "params": param_shardings, "opt_state": opt_sh,
          "bad_steps": replicated}


def init_state(tx: optax.GradientTransformation, params, shardings) -> dict[str, Any]:
  """Step 0: the optimizer initialized straight onto its shards."""
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  scalar = lambda: jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
  return {"step": scalar(), "params": params, "opt_state": opt_state, "bad_steps": scalar()}


def abstract_state(init: Callable[[], dict], shardings) -> dict[str, Any]:
  """ShapeDtypeStructs with shardings of what `init()` returns (restore targets, AOT compile)."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      jax.eval_shape(init), shardings)


def abstract_put(tree, shardings):
  """ShapeDtypeStructs of `tree` placed (abstractly) on `shardings`."""
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree,
                      shardings)


def tree_where(ok, new, old):
  """`new` where `ok` (a scalar bool), else `old`, leaf by leaf: how a bad step is skipped."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


class Trainer:
  """Owns the split model, the optimizer and the jitted step for one mesh.

  `state` is a plain pytree {"step", "params", "opt_state", "bad_steps"} (what checkpoints hold);
  `frozen` holds the non-trainable parameters. Batches are dicts of arrays with a leading global
  batch axis: latents [B,F,C,H,W], text_embeds [B,S,D], reward [B], is_real [B], all_good [B].
  """

  def __init__(self, model: nnx.Module, *, mesh: Mesh, optim: OptimConfig = OptimConfig(),
               loss: LossConfig = LossConfig(), schedule: NoiseSchedule | None = None,
               trainable: str = "blocks", accum_steps: int = 1, seed: int = 0,
               lora_rank: int = 64, lora_alpha: float = 64.0, rules=mesh_lib.DEFAULT_RULES):
    self.mesh, self.rules = mesh, rules
    self.optim_config, self.loss_config = optim, loss
    self.schedule = schedule or NoiseSchedule.cogvideox_2b()
    self.accum_steps = accum_steps
    self.base_key = jax.random.key(seed)
    self.tx = make_optimizer(optim)
    self.lr = learning_rate(optim)
    self.trainable = trainable
    if trainable == "lora":
      transformer_lora.add_lora(model, rank=lora_rank, alpha=lora_alpha, seed=seed)
    self.graphdef, params, frozen = nnx.split(model, trainable_filter(trainable), ...)
    self.param_shardings = nnx.to_pure_dict(mesh_lib.param_shardings(params, mesh, rules))
    self.frozen_shardings = nnx.to_pure_dict(mesh_lib.param_shardings(frozen, mesh, rules))
    self._params_template = params
    self._frozen_template = frozen
    # An abstract model (nnx.eval_shape) gives an abstract trainer: enough to AOT-compile the
    # step and plan memory for a full-size model without allocating it.
    self.abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    place = abstract_put if self.abstract else jax.device_put
    self.frozen = place(nnx.to_pure_dict(frozen), self.frozen_shardings)
    self._initial_params = place(nnx.to_pure_dict(params), self.param_shardings)
    self.state_shardings = self._state_shardings()
    self._jit_step = jax.jit(
        self._step, in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding,
                                  None),
        out_shardings=(self.state_shardings, None), donate_argnums=(0,))

  # ------------------------------------------------------------------------- state

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, mesh_lib.logical_to_spec(("activation_batch",), self.rules))

  def _state_shardings(self):
    return state_shardings(self.tx, self.mesh, self.param_shardings, self._initial_params)

  def init_state(self) -> dict[str, Any]:
    return init_state(self.tx, self._initial_params, self.state_shardings)

  def abstract_state(self) -> dict[str, Any]:
    """Shapes, dtypes and shardings of the state on this mesh (restore targets, AOT compile)."""
    return abstract_state(self.init_state, self.state_shardings)

  def model(self, state: dict[str, Any], merge_lora: bool = True) -> nnx.Module:
    """The full NNX model with the state's trainable parameters (for sampling or export);
    LoRA factors are merged into the weights unless `merge_lora=False`."""
    params = self._params_template
    frozen = self._frozen_template
    nnx.replace_by_pure_dict(params, state["params"])
    nnx.replace_by_pure_dict(frozen, self.frozen)
    model = nnx.merge(self.graphdef, params, frozen)
    if self.trainable == "lora" and merge_lora:
      return transformer_lora.merge_lora(model)
    return model

  # ------------------------------------------------------------------------- step

  def _loss(self, params, frozen, batch, key):
    model = nnx.merge(self.graphdef, params, frozen)
    lc = self.loss_config
    weights = loss_lib.sample_weights(batch["reward"], batch["is_real"], mode=lc.mode,
                                      transform=lc.transform, beta=lc.beta,
                                      real_weight=lc.real_weight, all_good=batch.get("all_good"))
    loss, aux = loss_lib.diffusion_loss(model, batch["latents"], batch["text_embeds"], weights,
                                        key, self.schedule)
    return loss, aux["mse"]

  def _step(self, state, frozen, batch, key):
    key = jax.random.fold_in(key, state["step"])
    params = state["params"]
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    a = self.accum_steps
    if a == 1:
      (loss, mse), grads = grad_fn(params, frozen, batch, key)
    else:
      # Strided split: micro-batch i holds rows i, i+a, ..., so every device keeps its own rows
      # (a contiguous split would move data between devices).
      micro = jax.tree.map(
          lambda x: mesh_lib.constrain(
              x.reshape((x.shape[0] // a, a) + x.shape[1:]).swapaxes(0, 1),
              (None, "activation_batch") + (None,) * (x.ndim - 1)), batch)

      def body(carry, xs):
        i, mb = xs
        (l, m), g = grad_fn(params, frozen, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (l, m, g)), None

      zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
               jax.tree.map(jnp.zeros_like, params))
      (loss, mse, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(a), micro))
      loss, mse, grads = jax.tree.map(lambda x: x / a, (loss, mse, grads))
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = self.tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {
        "step": state["step"] + 1,
        "params": tree_where(ok, new_params, params),
        "opt_state": tree_where(ok, new_opt, state["opt_state"]),
        "bad_steps": state["bad_steps"] + (~ok).astype(jnp.int32),
    }
    metrics = {"loss": loss, "mse": mse, "grad_norm": grad_norm, "lr": self.lr(state["step"]),
               "reward": jnp.mean(batch["reward"].astype(jnp.float32)), "finite": ok}
    return new_state, metrics

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays sharded over the batch axes (multi-host safe)."""
    sharding = self.batch_sharding
    local = len(next(iter(batch.values())))
    self.check_batch(local * jax.process_count())
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}

  def step(self, state, batch):
    """One optimizer step; `batch` may be host-local numpy (it is put onto the mesh)."""
    if not all(isinstance(v, jax.Array) for v in batch.values()):
      batch = self.put_batch(batch)
    with mesh_lib.use_mesh(self.mesh, self.rules):
      return self._jit_step(state, self.frozen, batch, self.base_key)

  def check_batch(self, batch_size: int) -> None:
    mesh_lib.check_divisible(self.mesh, batch=batch_size)
    if batch_size % (self.accum_steps * math.prod(
        self.mesh.shape[a] for a in ("data", "fsdp"))):
      raise ValueError(f"batch {batch_size} must split into {self.accum_steps} micro-batches, "
                       f"each divisible by data×fsdp")

  def lower(self, batch_spec: dict[str, jax.ShapeDtypeStruct]):
    """AOT-lowers the step for abstract inputs (no weights or data needed)."""
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
             for k, v in batch_spec.items()}
    frozen = abstract_put(self.frozen, self.frozen_shardings)
    with mesh_lib.use_mesh(self.mesh, self.rules):
      return self._jit_step.lower(self.abstract_state(), frozen, batch, self.base_key)


def batch_spec(batch: int, frames: int, channels: int, height: int, width: int, text_len: int,
               text_dim: int, dtype=jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract batch for AOT compilation and the memory plan."""
  sd = jax.ShapeDtypeStruct
  return {"latents": sd((batch, frames, channels, height, width), dtype),
          "text_embeds": sd((batch, text_len, text_dim), dtype),
          "reward": sd((batch,), jnp.float32), "is_real": sd((batch,), jnp.bool_),
          "all_good": sd((batch,), jnp.bool_)}

"""What every trainer here shares: the optimizer, the train state and its shardings, and one jitted
step (donated state, micro-batch accumulation, non-finite skip). A trainer adds only its loss.

The state is a plain pytree {"step", "params", "opt_state", "bad_steps"} (what checkpoints hold);
only the trainable subset has gradients and optimizer state, the rest is a frozen, non-donated
argument. The step:
  grads, sums = Σ_micro-batches ∇ objective      (one strided split, see `split_micro_batches`)
  grads, metrics = trainer.finish(grads, sums)    (the loss's normalisation and its metrics)
  clipped AdamW update, skipped (parameters and optimizer state unchanged) when the loss or the
  gradient norm is not finite; skipped steps are counted in the state
An abstract model (`nnx.eval_shape`) gives an abstract trainer: enough to AOT-compile the step and
plan memory for a full-size model without allocating it.
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

from lift_jax.layers import stack
from lift_jax.parallel import mesh as mesh_lib


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


def split_micro_batches(batch: dict[str, jax.Array], a: int) -> dict[str, jax.Array]:
  """`[B, ...]` -> `[a, B/a, ...]`, micro-batch i holding rows i, i+a, ...

  The strided split keeps every micro-batch's rows spread over the batch-sharded devices and the
  scanned axis unsharded: a contiguous split would move data between devices (and trips XLA's
  SPMD partitioner: "slice dim size greater than dynamic slice dimension").
  """
  return jax.tree.map(
      lambda x: mesh_lib.constrain(
          jnp.moveaxis(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 1, 0),
          (None, "activation_batch") + (None,) * (x.ndim - 1)), batch)


class TrainerCore:
  """The split model (trainable | frozen), the optimizer and the jitted step on one mesh.

  A trainer subclasses it with its loss: `objective(model, batch, key) -> (scalar to
  differentiate, dict of sums to accumulate)` and `finish(grads, sums, batch) -> (grads,
  metrics with "loss")`. Batches are dicts of arrays with a leading global batch axis.
  """

  batch_keys: tuple[str, ...] | None = None  # the keys a batch must carry (None: all given)

  def __init__(self, model: nnx.Module, trainable, *, mesh: Mesh, optim: OptimConfig,
               accum_steps: int = 1, seed: int = 0, rules=mesh_lib.DEFAULT_RULES):
    self.mesh, self.rules = mesh, rules
    self.accum_steps = accum_steps
    self.base_key = jax.random.key(seed)
    self.tx = make_optimizer(optim)
    self.lr = learning_rate(optim)
    self.graphdef, params, frozen = nnx.split(model, trainable, ...)
    self.param_shardings = nnx.to_pure_dict(mesh_lib.param_shardings(params, mesh, rules))
    self.frozen_shardings = nnx.to_pure_dict(mesh_lib.param_shardings(frozen, mesh, rules))
    self._params_template, self._frozen_template = params, frozen
    self.abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    place = abstract_put if self.abstract else jax.device_put
    self.frozen = place(nnx.to_pure_dict(frozen), self.frozen_shardings)
    self._initial_params = place(nnx.to_pure_dict(params), self.param_shardings)
    self.state_shardings = state_shardings(self.tx, mesh, self.param_shardings,
                                           self._initial_params)
    self._jit_step = jax.jit(
        self._step, in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding,
                                  None),
        out_shardings=(self.state_shardings, None), donate_argnums=(0,))

  # ------------------------------------------------------------------------- the loss (subclass)

  def objective(self, model: nnx.Module, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError

  def finish(self, grads, sums: dict[str, jax.Array], batch) -> tuple[Any, dict[str, jax.Array]]:
    raise NotImplementedError

  # ------------------------------------------------------------------------- state

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, mesh_lib.logical_to_spec(("activation_batch",), self.rules))

  def init_state(self) -> dict[str, Any]:
    return init_state(self.tx, self._initial_params, self.state_shardings)

  def abstract_state(self) -> dict[str, Any]:
    """Shapes, dtypes and shardings of the state on this mesh (restore targets, AOT compile)."""
    return abstract_state(self.init_state, self.state_shardings)

  def merged(self, state: dict[str, Any] | None = None) -> nnx.Module:
    """The whole NNX model with the state's trainable parameters (the initial ones if None)."""
    params, frozen = self._params_template, self._frozen_template
    nnx.replace_by_pure_dict(params, self._initial_params if state is None else state["params"])
    nnx.replace_by_pure_dict(frozen, self.frozen)
    return nnx.merge(self.graphdef, params, frozen)

  # ------------------------------------------------------------------------- step

  def _objective(self, params, frozen, batch, key):
    return self.objective(nnx.merge(self.graphdef, params, frozen), batch, key)

  def _step(self, state, frozen, batch, key):
    key = jax.random.fold_in(key, state["step"])
    params = state["params"]
    grad_fn = jax.grad(self._objective, has_aux=True)
    a = self.accum_steps
    if a == 1:
      grads, sums = grad_fn(params, frozen, batch, key)
    else:
      def body(carry, xs):
        i, mb = xs
        g, s = grad_fn(params, frozen, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (g, s)), None

      _, sums_shape = jax.eval_shape(grad_fn, params, frozen,
                                     jax.tree.map(lambda x: x[:x.shape[0] // a], batch), key)
      zeros = (jax.tree.map(jnp.zeros_like, params),
               jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
      (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(a), split_micro_batches(batch, a)),
                                      unroll=stack.unroll(a))  # collectives inside: see there
    grads, metrics = self.finish(grads, sums, batch)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, new_opt = self.tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {
        "step": state["step"] + 1,
        "params": tree_where(ok, new_params, params),
        "opt_state": tree_where(ok, new_opt, state["opt_state"]),
        "bad_steps": state["bad_steps"] + (~ok).astype(jnp.int32),
    }
    return new_state, {**metrics, "grad_norm": grad_norm, "lr": self.lr(state["step"]),
                       "finite": ok}

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays sharded over the batch axes (multi-host safe)."""
    keys = self.batch_keys or tuple(batch)
    local = len(batch[keys[0]])
    self.check_batch(local * jax.process_count())
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(batch[k]))
            for k in keys}

  def on_mesh(self, batch) -> dict[str, jax.Array]:
    return batch if all(isinstance(v, jax.Array) for v in batch.values()) else self.put_batch(batch)

  def step(self, state, batch):
    """One optimizer step; `batch` may be host-local numpy (it is put onto the mesh)."""
    batch = self.on_mesh(batch)
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

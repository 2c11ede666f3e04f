"""The training loop and the `tools/train.py` job: data → jitted steps → checkpoints and logs.

`fit` is the loop (checkpoints every N steps and on SIGTERM, halts after too many non-finite steps,
TensorBoard scalars, a progress bar); `run` builds everything from a config: mesh, model, data,
trainer, memory plan, resume.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any, Iterator

import jax
import numpy as np
from tqdm import tqdm

from lift_jax import parallel, runtime
from lift_jax.checkpoint.manager import TrainCheckpointer
from lift_jax.data import loaders
from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.lift import memory
from lift_jax.lift.train import LossConfig, OptimConfig, Trainer
from lift_jax.models import cogvideox

log = logging.getLogger(__name__)

# bf16 dense peak FLOP/s per device, for MFU (device_kind substrings).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops(device: jax.Device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if name in kind:
      return flops
  return None


class TooManyBadSteps(RuntimeError):
  pass


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (so it can save first)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class ScalarWriter:
  """TensorBoard scalars from process 0 only; other processes write nothing."""

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir and jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(logdir)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer is not None:
      for name, value in scalars.items():
        self._writer.add_scalar(name, value, step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def fit(trainer: Trainer, state: dict[str, Any], data: Iterator[dict[str, np.ndarray]], *,
        num_steps: int, checkpointer: TrainCheckpointer | None = None, save_every: int = 0,
        log_every: int = 10, writer: ScalarWriter | None = None, max_bad_steps: int = 10,
        flops_per_step: float | None = None, tokens_per_step: int | None = None,
        progress: bool = True, history: list | None = None) -> dict[str, Any]:
  """Steps until `num_steps` (a global step count), saving every `save_every` and on SIGTERM.

  `history`, when given, receives one dict of host metrics per step (for reports and tests).
  """
  start = int(jax.device_get(state["step"]))
  peak = peak_flops(jax.devices()[0])
  bar = None
  if progress and jax.process_index() == 0:
    bar = tqdm(total=num_steps, initial=start, desc="train", unit="step")
  saved_at = start
  with _Preemption() as preemption:
    for step in range(start, num_steps):
      batch = next(data)
      t0 = time.perf_counter()
      state, metrics = trainer.step(state, batch)
      if (step + 1) % log_every == 0 or step + 1 == num_steps:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.perf_counter() - t0
        host["bad_steps"] = int(jax.device_get(state["bad_steps"]))
        host["step_time_s"] = dt
        if tokens_per_step:
          host["tokens_per_s"] = tokens_per_step / dt
        if flops_per_step and peak:
          host["mfu"] = flops_per_step / dt / (peak * jax.device_count())
        if writer:
          writer.write(step + 1, host)
        if history is not None:
          history.append({"step": step + 1, **host})
        if bar:
          bar.set_postfix(loss=f"{host['loss']:.4f}", gnorm=f"{host['grad_norm']:.3f}")
        if host["bad_steps"] > max_bad_steps:
          if checkpointer and saved_at != step + 1:
            checkpointer.save(step + 1, state, data, force=True)
            checkpointer.wait()
          raise TooManyBadSteps(
              f"{host['bad_steps']} steps had a non-finite loss or gradient (limit "
              f"{max_bad_steps}); their updates were skipped. Lower the learning rate, check the "
              f"data (latents/embeddings with NaN or Inf), or raise --config.max_bad_steps.")
      if bar:
        bar.update(1)
      if checkpointer and save_every and (step + 1) % save_every == 0:
        checkpointer.save(step + 1, state, data)
        saved_at = step + 1
      if preemption.requested:
        log.warning("SIGTERM: saving step %d before exit", step + 1)
        if checkpointer and saved_at != step + 1:
          checkpointer.save(step + 1, state, data, force=True)
        break
    else:
      if checkpointer and num_steps > start and saved_at != num_steps:
        checkpointer.save(num_steps, state, data, force=True)
  if checkpointer:
    checkpointer.wait()
  if bar:
    bar.close()
  return state


def write_results(workdir: str, history: list[dict], summary: dict[str, Any]) -> None:
  """A job's per-step metrics (train_history.jsonl) and summary (train_summary.json), process 0."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_history.jsonl"), "w") as f:
      f.writelines(json.dumps(h) + "\n" for h in history)
    with open(os.path.join(workdir, "train_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)


def tokens_per_sample(model_cfg, latent_shape) -> int:
  f, _, h, w = latent_shape
  return (f // model_cfg.temporal_patch) * (h // model_cfg.patch_size) * (
      w // model_cfg.patch_size) + model_cfg.max_text_seq_length


def run(config, workdir: str) -> dict[str, Any]:
  """The whole training job from a config (see configs/lift_2b.py); returns a summary."""
  runtime.setup(config.get("compilation_cache"))
  parallel.initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.mesh.to_dict())
  mc = config.model
  model = cogvideox.load_transformer(mc.transformer, dtype=mc.dtype, param_dtype=mc.param_dtype,
                                     mesh=mesh, remat=mc.remat, attention_impl=mc.attention_impl)
  parallel.check_divisible(mesh, heads=model.config.num_attention_heads,
                           batch=config.data.batch_size)
  per_host = config.data.batch_size // jax.process_count()
  dataset = loaders.make_dataset(config.data.dir, batch_size=per_host, seed=config.seed,
                                 real_fraction=config.data.get("real_fraction"),
                                 num_epochs=None)
  epoch_steps = loaders.steps_per_epoch(loaders.make_dataset(
      config.data.dir, batch_size=per_host, seed=config.seed,
      real_fraction=config.data.get("real_fraction"), num_epochs=1))
  num_steps = config.get("num_steps") or int(config.num_epochs * (epoch_steps or 1))
  optim = OptimConfig(**{**config.optim.to_dict(), "total_steps": num_steps})
  schedule = (NoiseSchedule.cogvideox_2b() if config.schedule == "2b"
              else NoiseSchedule.cogvideox_5b())
  trainer = Trainer(model, mesh=mesh, optim=optim, loss=LossConfig(**config.loss.to_dict()),
                    schedule=schedule, trainable=config.trainable,
                    accum_steps=config.accum_steps, seed=config.seed,
                    lora_rank=config.lora.rank, lora_alpha=config.lora.alpha)
  trainer.check_batch(config.data.batch_size)
  first = dataset[0]  # one host batch: the shapes of every batch
  _, f, c, h, w = first["latents"].shape
  spec = {k: jax.ShapeDtypeStruct((config.data.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
          for k, v in first.items() if k in loaders.BATCH_KEYS}
  start = time.perf_counter()
  compiled = trainer.lower(spec).compile()
  p = memory.plan(compiled, trainer.abstract_state(), trainer.frozen)
  print(f"{p.report()} (step compiled in {time.perf_counter() - start:.1f}s)", flush=True)
  memory.check_fits(p, remat=mc.remat, fsdp=mesh.shape["fsdp"],
                    batch_per_device=max(config.data.batch_size // jax.device_count(), 1))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  iterator = loaders.make_iterator(dataset)
  checkpointer = TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(trainer.abstract_state(), iterator)
    log.warning("resumed from step %d", int(jax.device_get(state["step"])))
  else:
    state = trainer.init_state()
  writer = ScalarWriter(os.path.join(workdir, "tensorboard"))
  history: list[dict] = []
  try:
    state = fit(trainer, state, iterator, num_steps=num_steps, checkpointer=checkpointer,
                save_every=config.checkpoint_every, log_every=config.log_every, writer=writer,
                max_bad_steps=config.max_bad_steps, flops_per_step=flops or None,
                tokens_per_step=config.data.batch_size * tokens_per_sample(model.config, (f, c, h, w)),
                history=history)
  finally:
    writer.close()
    checkpointer.close()
  final_step = int(jax.device_get(state["step"]))
  summary = {"steps": final_step, "num_steps": num_steps, "memory_plan": p.report(),
             "bad_steps": int(jax.device_get(state["bad_steps"]))}
  if final_step >= num_steps:
    out = os.path.join(workdir, "transformer")
    cogvideox.save_transformer(trainer.model(state), out, overwrite=True)
    summary["transformer"] = out
  write_results(workdir, history, summary)
  return summary

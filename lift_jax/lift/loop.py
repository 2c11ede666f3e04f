"""The training loop and the `tools/train.py` job: data → jitted steps → checkpoints and logs.

`fit` is the loop (checkpoints every N steps and on SIGTERM, halts after too many non-finite steps,
TensorBoard scalars, a progress bar); `run` builds everything from a config: mesh, model, data,
trainer, memory plan, resume.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any, Iterator

import jax
import numpy as np
from tqdm import tqdm

from lift_jax import files, layers, parallel, runtime
from lift_jax.checkpoint.manager import TrainCheckpointer
from lift_jax.data import loaders
from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.lift import memory, throughput
from lift_jax.lift.train import LossConfig, OptimConfig, Trainer
from lift_jax.models import cogvideox

log = logging.getLogger(__name__)

class TooManyBadSteps(RuntimeError):
  pass


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (so it can save first); the hosts
  agree on it (`parallel.any_process`) before acting."""

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
        step_flops: throughput.StepFlops | None = None, tokens_per_step: int | None = None,
        progress: bool = True, history: list | None = None, profile_steps: int = 0,
        profile_dir: str | None = None) -> dict[str, Any]:
  """Steps until `num_steps` (a global step count), saving every `save_every` and on SIGTERM.

  `history`, when given, receives one dict of host metrics per step (for reports and tests).
  Logged steps carry the wall time per step since the previous logged step (`throughput.StepTimer`:
  none on the first, whose interval holds the compile) and, with `step_flops`, tokens/s and MFU
  (`throughput.report`); without it, tokens/s from `tokens_per_step`.
  `profile_steps` > 0 writes a jax.profiler trace of that many steps to `profile_dir`, starting
  with the second step of this run (the first one compiles).
  """
  start = int(jax.device_get(state["step"]))
  timer = throughput.StepTimer()
  device_kind = jax.devices()[0].device_kind
  bar = None
  if progress and jax.process_index() == 0:
    bar = tqdm(total=num_steps, initial=start, desc="train", unit="step")
  saved_at = start
  with _Preemption() as preemption:
    for step in range(start, num_steps):
      batch = next(data)
      if profile_steps and step == start + 1:
        jax.profiler.start_trace(profile_dir)
      state, metrics = trainer.step(state, batch)
      if profile_steps and step == min(start + profile_steps, num_steps - 1) > start:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      if (step + 1) % log_every == 0 or step + 1 == num_steps:
        seconds = timer.lap(step + 1, metrics)
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        host["bad_steps"] = int(jax.device_get(state["bad_steps"]))
        if seconds is not None and step_flops is not None:
          figures = throughput.report(step_flops, seconds, jax.device_count(), device_kind)
          host.update({k: v for k, v in figures.items() if v is not None})
        elif seconds is not None:
          host["step_time_s"] = seconds
          if tokens_per_step:
            host["tokens_per_s"] = tokens_per_step / seconds
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
        timer.reset()  # the save's pause is not a step
      # Every host leaves at the same step (a SIGTERM may reach only one of them).
      if parallel.any_process(preemption.requested):
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
    files.write_text(files.join(workdir, "train_history.jsonl"),
                     "".join(json.dumps(h) + "\n" for h in history))
    files.write_json(files.join(workdir, "train_summary.json"), summary)


def run(config, workdir: str) -> dict[str, Any]:
  """The whole training job from a config (see configs/lift_2b.py); returns a summary."""
  runtime.setup(config.get("compilation_cache"), memory_fraction=config.get("memory_fraction"))
  parallel.initialize_distributed()
  files.makedirs(workdir)
  mesh = parallel.make_mesh(config.mesh.to_dict())
  mc = config.model
  layers.configure_attention(**dict(mc.get("attention") or {}))
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
  spec = {k: jax.ShapeDtypeStruct((config.data.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
          for k, v in first.items() if k in loaders.BATCH_KEYS}
  start = time.perf_counter()
  compiled = trainer.lower(spec).compile()
  p = memory.plan(compiled, trainer.abstract_state(), trainer.frozen)
  print(f"{p.report()} (step compiled in {time.perf_counter() - start:.1f}s)", flush=True)
  memory.check_fits(p, remat=mc.remat, fsdp=mesh.shape["fsdp"],
                    batch_per_device=max(config.data.batch_size // jax.device_count(), 1))
  # Analytic FLOPs (XLA's cost_analysis counts a scanned layer stack once, per device).
  step_flops = throughput.train_step_flops(model.config, spec["latents"].shape,
                                           int(spec["text_embeds"].shape[1]), remat=mc.remat)
  hardware = "unknown" if step_flops.hardware is None else f"{step_flops.hardware / 1e12:.1f}"
  print(f"model FLOPs per step {step_flops.model / 1e12:.1f} TFLOP (with remat recompute "
        f"{hardware}), {step_flops.tokens} tokens", flush=True)

  iterator = loaders.make_iterator(dataset)
  checkpointer = TrainCheckpointer(files.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(trainer.abstract_state(), iterator)
    log.warning("resumed from step %d", int(jax.device_get(state["step"])))
  else:
    state = trainer.init_state()
  writer = ScalarWriter(files.join(workdir, "tensorboard"))
  history: list[dict] = []
  try:
    state = fit(trainer, state, iterator, num_steps=num_steps, checkpointer=checkpointer,
                save_every=config.checkpoint_every, log_every=config.log_every, writer=writer,
                max_bad_steps=config.max_bad_steps, step_flops=step_flops,
                history=history, profile_steps=config.get("profile_steps", 0),
                profile_dir=files.join(workdir, "profile"))
  finally:
    writer.close()
    checkpointer.close()
  final_step = int(jax.device_get(state["step"]))
  summary = {"steps": final_step, "num_steps": num_steps, "memory_plan": p.report(),
             "bad_steps": int(jax.device_get(state["bad_steps"]))}
  if final_step >= num_steps:
    out = files.join(workdir, "transformer")
    cogvideox.save_transformer(trainer.model(state), out, overwrite=True)
    summary["transformer"] = out
  write_results(workdir, history, summary)
  parallel.barrier(f"train-summary:{workdir}")  # on every host once it is there
  return summary

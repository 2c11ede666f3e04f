"""The device suite's JAX sections: environment, attention, the LiFT train step, sampling, VAE.

Each `section_*(rec, plan)` runs in its own process (device_suite.py starts it) and records as it
goes. Everything goes through the library's public entry points: `layers.attention`,
`CogVideoXTransformer3D`, `train.Trainer`, `memory.plan`, `samplers.sample`,
`AutoencoderKLCogVideoX.decode` and `lift.throughput` for FLOPs, MFU and the step timer.
"""

from __future__ import annotations

import functools
import os
import time
import warnings

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx

from lift_jax import layers, parallel, runtime
from lift_jax.diffusion import samplers
from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.lift import memory, throughput, train
from lift_jax.models import cogvideox
from suite_common import attention_flops, bytes_to_gib, stats, tflops, timed

BF16 = jnp.bfloat16
SCHEDULES = {"2b": NoiseSchedule.cogvideox_2b, "5b": NoiseSchedule.cogvideox_5b}


def setup() -> None:
  """The persistent compilation cache (device_suite.py gives each run a fresh folder, so compile
  times are real): the train step is compiled once ahead of time, timed, and its first call
  loads that program instead of compiling again. A cache the caller set up is kept."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    runtime.enable_compilation_cache()


def _sync(x):
  return jax.block_until_ready(x)


def _device() -> jax.Device:
  return jax.devices()[0]


def _memory_stats() -> dict:
  try:
    return _device().memory_stats() or {}
  except Exception:  # some backends have none
    return {}


def _peak_gib() -> float | None:
  return bytes_to_gib(_memory_stats().get("peak_bytes_in_use"))


@functools.cache
def _host_buffer() -> np.ndarray:
  return np.random.default_rng(0).standard_normal(1_000_003).astype(np.float32)


def _host_normal(seed: int, shape, dtype, scale: float = 1.0) -> np.ndarray:
  """N(0, scale²) draws of `shape`, tiled from one host buffer of 1,000,003 (rotated by `seed`):
  random enough for timing and agreement checks, and no `jax.random` program to compile."""
  buffer = _host_buffer()
  buffer = np.roll(buffer, (seed * 104_729) % buffer.size)
  return np.resize((scale * buffer).astype(dtype), tuple(shape))


def _normal(seed: int, shape, dtype=BF16) -> jax.Array:
  return jnp.asarray(_host_normal(seed, shape, dtype))


def _random_module(make):
  """`make()`'s module with random N(0, 0.02²) weights, built without compiling anything:
  abstract first, then filled from host draws (per-shape `jax.random` inits would compile
  dozens of programs)."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  leaves, treedef = jax.tree.flatten(state)
  arrays = [jnp.asarray(_host_normal(i, leaf.shape, leaf.dtype, 0.02))
            for i, leaf in enumerate(leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays))


def _transformer_config(plan, name: str, **runtime_fields) -> cogvideox.CogVideoXConfig:
  return cogvideox.CogVideoXConfig.from_diffusers_config(plan["models"][name], **runtime_fields)


# ----------------------------------------------------------------------------- environment


def _cudnn_version() -> str | None:
  """The cuDNN JAX loaded (a private accessor), else the installed cuDNN wheel's version."""
  try:
    from jax._src.lib import cuda_versions
    if cuda_versions is not None:
      return str(cuda_versions.cudnn_get_version())
  except Exception:
    pass
  import importlib.metadata
  for dist in ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12"):
    try:
      return f"{importlib.metadata.version(dist)} ({dist})"
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def section_env(rec, plan) -> None:
  dev = _device()
  rec.put("versions", {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                       "flax": flax.__version__, "optax": optax.__version__,
                       "cudnn": _cudnn_version()})
  peak = throughput.peak_flops(dev.device_kind)
  rec.put("device", {"platform": dev.platform, "device_kind": dev.device_kind,
                     "device_count": jax.device_count(),
                     "memory_limit_gib": bytes_to_gib(_memory_stats().get("bytes_limit")),
                     "peak_bf16_tflops_table": None if peak is None else peak / 1e12})
  n = plan["shapes"]["matmul"]
  a, b = _normal(0, (n, n)), _normal(1, (n, n))
  matmul = jax.jit(jnp.matmul)
  _sync(matmul(a, b))
  times = timed(lambda: matmul(a, b), plan["shapes"]["reps"] * 3, _sync)
  best = min(times)
  rec.put("matmul_bf16", {"n": n, **stats(times), "tflops": tflops(2.0 * n**3, best),
                          "note": "best of the timed runs: the card's practical peak"})


# ----------------------------------------------------------------------------- attention


def _attention_impl() -> str:
  return "cudnn" if jax.default_backend() == "gpu" else "xla"


def _checked(fn, *args):
  """Runs `fn(*args)` and turns the dispatcher's fallback warning into an error: a benchmark
  of the fused kernel must not silently time another one."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = _sync(fn(*args))
  fallbacks = [str(w.message) for w in caught if "instead" in str(w.message)]
  if fallbacks:
    raise RuntimeError(f"attention fell back: {fallbacks[0]}")
  return out


def section_attention(rec, plan) -> None:
  impl = _attention_impl()
  rec.put("impl", impl)
  reps = plan["shapes"]["reps"]
  for shape in plan["shapes"]["attention"]:
    q, k, v, do = (_normal(i, shape) for i in range(4))
    fwd = jax.jit(functools.partial(layers.attention, impl=impl))

    def loss(q, k, v, do):
      return jnp.sum(layers.attention(q, k, v, impl=impl).astype(jnp.float32) *
                     do.astype(jnp.float32))

    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    _checked(fwd, q, k, v)
    t_fwd = timed(lambda: fwd(q, k, v), reps, _sync)
    _checked(bwd, q, k, v, do)
    t_bwd = timed(lambda: bwd(q, k, v, do), reps, _sync)
    rec.put("x".join(map(str, shape)), {
        "shape_BTNH": shape,
        "forward": {**stats(t_fwd), "tflops": tflops(attention_flops(shape, False), min(t_fwd))},
        "forward_backward": {**stats(t_bwd),
                             "tflops": tflops(attention_flops(shape, True), min(t_bwd))}})
  # Agreement on a slice both paths can hold: bf16 kernel and bf16 XLA against an fp32 reference.
  b, _, n, h = plan["shapes"]["attention"][0]
  t = plan["shapes"]["attention_check"]
  q, k, v = (_normal(10 + i, (b, t, n, h)) for i in range(3))
  ref = layers.attention(*(x.astype(jnp.float32) for x in (q, k, v)), impl="xla")
  scale = float(jnp.max(jnp.abs(ref)))
  err = lambda out: float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))) / scale
  rec.put("agreement", {"tokens": t, "heads": n,
                        f"{impl}_bf16_vs_fp32_rel_err": err(_checked(fwd, q, k, v)),
                        "xla_bf16_vs_fp32_rel_err": err(layers.attention(q, k, v, impl="xla"))})


# ----------------------------------------------------------------------------- train step


def _train(rec, plan, batch_size: int) -> None:
  shapes = plan["shapes"]
  f, c, h, w = shapes["latents"]
  s = shapes["text_len"]
  dtype = jnp.dtype(plan["dtype"])
  cfg = _transformer_config(plan, "2b", dtype=dtype.name, param_dtype="float32",
                            remat=plan["remat"],
                            attention_impl="auto")
  start = time.perf_counter()
  model = _random_module(lambda: cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0)))
  trainer = train.Trainer(model, mesh=parallel.make_mesh({"data": 1}, [_device()]),
                          schedule=SCHEDULES["2b"](), trainable="blocks")
  rec.put("setup", {"model": "2b", "batch": batch_size, "latents_FCHW": [f, c, h, w],
                    "text_len": s, "remat": cfg.remat, "trainable": "blocks",
                    "dtype": f"{dtype.name} compute, fp32 master weights and AdamW state",
                    "attention_impl": layers.resolve_impl(cfg.attention_impl, dtype),
                    "init_s": time.perf_counter() - start})
  spec = train.batch_spec(batch_size, f, c, h, w, s, cfg.text_embed_dim, dtype=dtype)
  start = time.perf_counter()
  compiled = trainer.lower(spec).compile()
  compile_s = time.perf_counter() - start
  mem = memory.plan(compiled, trainer.abstract_state(), trainer.frozen)
  rec.put("compile_s", compile_s)
  rec.put("memory_analysis_gib", {
      "parameters": bytes_to_gib(mem.params_bytes),
      "optimizer_state": bytes_to_gib(mem.optimizer_bytes),
      "temporaries": bytes_to_gib(mem.temp_bytes), "arguments": bytes_to_gib(mem.argument_bytes),
      "outputs": bytes_to_gib(mem.output_bytes), "total": bytes_to_gib(mem.total_bytes),
      "capacity": bytes_to_gib(mem.capacity_bytes)})
  del compiled
  state = trainer.init_state()
  batch = {"latents": _normal(0, spec["latents"].shape, dtype),
           "text_embeds": _normal(1, spec["text_embeds"].shape, dtype),
           "reward": jnp.full((batch_size,), 0.5, jnp.float32),
           "is_real": jnp.zeros((batch_size,), bool), "all_good": jnp.zeros((batch_size,), bool)}
  batch = jax.device_put(batch, trainer.batch_sharding)
  timer = throughput.StepTimer()
  start = time.perf_counter()
  state, metrics = trainer.step(state, batch)
  timer.lap(0, metrics)
  rec.put("first_step_s", time.perf_counter() - start)
  times = []
  for i in range(1, shapes["train_steps"] + 1):
    state, metrics = trainer.step(state, batch)
    times.append(timer.lap(i, metrics))
  flops = throughput.train_step_flops(cfg, spec["latents"].shape, s)
  dev = _device()
  median = float(np.median(times))
  rec.put("step", {**stats(times), "loss": float(metrics["loss"]),
                   "finite": bool(metrics["finite"]),
                   "model_tflop_per_step": flops.model / 1e12,
                   "hardware_tflop_per_step": flops.hardware / 1e12,
                   **throughput.report(flops, median, 1, dev.device_kind)})
  rec.put("peak_memory_gib", _peak_gib())


def section_train(rec, plan) -> None:
  _train(rec, plan, 1)


def section_train_batch2(rec, plan) -> None:
  _train(rec, plan, 2)


# ----------------------------------------------------------------------------- sampling


def _generate(rec, plan, name: str) -> None:
  shapes = plan["shapes"]
  f, c, h, w = shapes["latents"]
  s, steps = shapes["text_len"], shapes["sample_steps"]
  dtype = jnp.dtype(plan["dtype"])
  cfg = _transformer_config(plan, name, dtype=dtype.name, param_dtype=dtype.name,
                            attention_impl="auto")
  start = time.perf_counter()
  model = _random_module(lambda: cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0)))
  rec.put("setup", {"model": name, "latents_FCHW": [f, c, h, w], "text_len": s,
                    "cfg_batch": 2, "sampler": "ddim", "steps_per_call": steps, "dtype": dtype.name,
                    "attention_impl": layers.resolve_impl(cfg.attention_impl, dtype),
                    "init_s": time.perf_counter() - start})
  latents = _normal(0, (1, f, c, h, w), dtype)
  cond = _normal(1, (1, s, cfg.text_embed_dim), dtype)
  uncond = _normal(2, (1, s, cfg.text_embed_dim), dtype)
  run = lambda: samplers.sample(model, latents, cond, uncond, schedule=SCHEDULES[name](),
                                num_steps=steps, guidance_scale=6.0, sampler="ddim")
  start = time.perf_counter()
  _sync(run())
  rec.put("compile_and_first_call_s", time.perf_counter() - start)
  times = [t / steps for t in timed(run, shapes["sample_reps"], _sync)]
  flops = throughput.forward_step_flops(cfg, (2, f, c, h, w), s)
  median = float(np.median(times))
  rec.put("denoising_step", {**stats(times), "tflop": flops.model / 1e12,
                             **throughput.report(flops, median, 1, _device().device_kind)})
  rec.put("video_50_steps_s", 50 * median)
  rec.put("peak_memory_gib", _peak_gib())


def section_generate(rec, plan) -> None:
  _generate(rec, plan, "2b")


def section_generate_5b(rec, plan) -> None:
  _generate(rec, plan, "5b")


# ----------------------------------------------------------------------------- VAE


def section_vae(rec, plan) -> None:
  shapes = plan["shapes"]
  vcfg = cogvideox.CogVideoXVAEConfig.from_diffusers_config(plan["vae"], dtype=plan["dtype"],
                                                            param_dtype=plan["dtype"])
  vae = _random_module(lambda: cogvideox.AutoencoderKLCogVideoX(vcfg, rngs=nnx.Rngs(0)))
  vae.enable_tiling(*(shapes["vae_tile"] or ()))
  z = _normal(0, shapes["vae_latents"], jnp.float32)
  rec.put("setup", {"latents_BCFHW": shapes["vae_latents"], "tiled": True, "dtype": vcfg.dtype,
                    "tile_sample_min_hw": [vae.tile_sample_min_height, vae.tile_sample_min_width]})
  start = time.perf_counter()
  video = _sync(vae.decode(z))
  rec.put("compile_and_first_call_s", time.perf_counter() - start)
  rec.put("video_shape", list(video.shape))
  del video
  rec.put("decode", stats(timed(lambda: vae.decode(z), shapes["vae_reps"], _sync)))
  rec.put("peak_memory_gib", _peak_gib())


SECTIONS = {"env": section_env, "attention": section_attention, "train": section_train,
            "train_batch2": section_train_batch2, "generate": section_generate,
            "generate_5b": section_generate_5b, "vae": section_vae}

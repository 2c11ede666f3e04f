"""Text -> video with CogVideoX, as diffusers' `CogVideoXPipeline` (T2V) computes it.

prompts -> T5 ids (226, `</s>`, padded) -> T5 embeddings (no mask; one negative prompt, "" by
default, encoded once) -> initial noise `[B, F_lat, 16, H/8, W/8]` -> jitted sampler with CFG
(`samplers.sample`) -> latents / scaling_factor -> VAE decode -> video `[B, 3, F, H, W]` in [-1, 1].

What differs from diffusers, on purpose:
- Randomness is per prompt: each prompt's initial noise and its DPM step noise come from its own
  seed, so a video depends on its prompt and seed only, not on what else shares the batch.
- The batch is sharded over the mesh's batch axes ('data' x 'fsdp'); `generate` pads it to a
  multiple of their size (repeating the last prompt) and drops the padding after.
CogVideoX 1.5 (patch_size_t = 2) pads the latent frames at the front to a multiple of patch_size_t
and drops them before decoding, as its pipeline does; 5B/1.5 RoPE comes from the transformer's own
config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lift_jax import parallel
from lift_jax.checkpoint import store
from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.diffusion import samplers
from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.models.cogvideox import params as cogvideox_params
from lift_jax.models.cogvideox import vae_params
from lift_jax.models.cogvideox.loading import load_transformer
from lift_jax.models.cogvideox.vae_params import load_vae
from lift_jax.models.t5 import params as t5_params
from lift_jax.models.t5 import tokenizer as tok_lib
from lift_jax.models.t5.params import load_encoder
from lift_jax.models.t5.tokenizer import CogVideoXTokenizer

BATCH_AXES = ("data", "fsdp")
SCHEDULE_PRESETS = {"2b": NoiseSchedule.cogvideox_2b, "5b": NoiseSchedule.cogvideox_5b}
DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype: str) -> str:
  """"auto": bfloat16 on accelerators, float32 on CPU (where bf16 matmuls are slow and inexact)."""
  if dtype == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected 'auto' or one of {DTYPES}")
  return dtype


# ----------------------------------------------------------------------------- noise


def _check_seeds(seeds: Sequence[int]) -> np.ndarray:
  seeds = [int(s) for s in seeds]
  bad = [s for s in seeds if not 0 <= s < 2**32]
  if bad:
    raise ValueError(f"seeds must be integers in [0, 2**32), got {bad[:5]}")
  return np.asarray(seeds, np.uint32)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "num_steps"))
def _draw_one(seed, *, shape, dtype, num_steps):
  """One prompt's noise: a single `normal` draw `[1 + num_steps, *shape]` from `key(seed)`; row 0
  is the initial noise, row 1 + i the DPM noise of step i. (With JAX's default partitionable
  threefry an element depends on its index only, so row 0 is the same whatever num_steps.)"""
  x = jax.random.normal(jax.random.key(seed), (1 + num_steps, *shape), dtype)
  return x[0], x[1:]


def draw_noise(seeds: Sequence[int], shape: tuple[int, ...], dtype, num_steps: int = 0, *,
               mesh: Mesh | None = None) -> tuple[jax.Array, jax.Array | None]:
  """Per-prompt noise: row b comes from `seeds[b]` alone, so a video does not depend on the
  rest of its batch. One compiled draw per (shape, num_steps), whatever the batch size.

  Returns (initial `[B, *shape]`, DPM step noise `[num_steps, B, *shape]` or None if num_steps is
  0), sharded over the mesh's batch axes when a mesh is given.
  """
  seeds = _check_seeds(seeds)
  draws = [_draw_one(jnp.uint32(s), shape=tuple(shape), dtype=jnp.dtype(dtype),
                     num_steps=num_steps) for s in seeds]
  init = jnp.stack([d[0] for d in draws])
  steps = jnp.stack([d[1] for d in draws], axis=1) if num_steps else None
  if mesh is not None:
    init = jax.device_put(init, _batch_sharding(mesh, init.ndim, 0))
    if steps is not None:
      steps = jax.device_put(steps, _batch_sharding(mesh, steps.ndim, 1))
  return init, steps


# ----------------------------------------------------------------------------- sharding


def batch_ways(mesh: Mesh | None) -> int:
  """How many ways the batch is split: the product of the mesh's 'data' and 'fsdp' sizes."""
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def _batch_sharding(mesh: Mesh, ndim: int, axis: int) -> NamedSharding:
  spec = [None] * ndim
  spec[axis] = tuple(a for a in BATCH_AXES if a in mesh.shape)
  return NamedSharding(mesh, PartitionSpec(*spec))


def _pad_rows(x, pad: int, axis: int = 0):
  """Repeats the last entry along `axis` `pad` times (a list or an array)."""
  if not pad or x is None:
    return x
  if isinstance(x, (list, tuple)):
    return list(x) + [x[-1]] * pad
  last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
  return jnp.concatenate([x] + [last] * pad, axis=axis)


# ----------------------------------------------------------------------------- the pipeline


@functools.partial(jax.jit, static_argnames=("graphdef", "dtype"))
def _encode_ids(graphdef, state, ids, *, dtype):
  return nnx.merge(graphdef, state)(ids).astype(dtype)


class TextToVideo:
  """CogVideoX text-to-video: `generate(prompts, seeds, ...) -> video [B, 3, F, H, W]` in [-1, 1].

  The steps are public too (`encode_prompts`, `sample_latents`, `decode`), so callers can cache
  embeddings or keep latents. Components: a `CogVideoXTokenizer`, a `T5Encoder`, a
  `CogVideoXTransformer3D`, an `AutoencoderKLCogVideoX` and a `NoiseSchedule`; latents and
  embeddings use the transformer's compute dtype.
  """

  def __init__(self, tokenizer, text_encoder, transformer, vae, schedule: NoiseSchedule, *,
               mesh: Mesh | None = None, paths: dict[str, str | None] | None = None):
    tcfg, vcfg = transformer.config, vae.config
    if tcfg.in_channels != vcfg.latent_channels:
      raise ValueError(f"the transformer takes {tcfg.in_channels} latent channels, the VAE makes "
                       f"{vcfg.latent_channels}: image-to-video checkpoints (32 channels) are not "
                       "supported by this text-to-video pipeline")
    if text_encoder.config.d_model != tcfg.text_embed_dim:
      raise ValueError(f"the T5 encoder's width d_model={text_encoder.config.d_model} does not "
                       f"match the transformer's text_embed_dim={tcfg.text_embed_dim}")
    self.tokenizer = tokenizer
    self.text_encoder = text_encoder
    self.transformer = transformer
    self.vae = vae
    self.schedule = schedule
    self.mesh = mesh
    self.paths = dict(paths or {})
    self._t5 = nnx.split(text_encoder)

  # ---- facts

  @property
  def dtype(self) -> jnp.dtype:
    """Latents and text embeddings (diffusers: the prompt embeddings' dtype)."""
    return jnp.dtype(self.transformer.config.dtype)

  @property
  def scaling_factor(self) -> float:
    return float(self.vae.config.scaling_factor)

  @property
  def batch_ways(self) -> int:
    return batch_ways(self.mesh)

  def latent_frames(self, num_frames: int) -> tuple[int, int]:
    """(latent frames the sampler runs on, padding frames at the front): (F-1)/4+1, padded to a
    multiple of patch_size_t for CogVideoX 1.5."""
    lf = (num_frames - 1) // self.vae.config.temporal_compression_ratio + 1
    pt = self.transformer.config.patch_size_t
    extra = (-lf) % pt if pt else 0
    return lf + extra, extra

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """One prompt's latents `(F_lat, C, H/8, W/8)`; bad sizes raise, naming what they must be."""
    t = self.vae.config.temporal_compression_ratio
    s = self.vae.config.spatial_compression_ratio
    p = self.transformer.config.patch_size
    if num_frames < 1 or (num_frames - 1) % t:
      raise ValueError(f"num_frames={num_frames}: expected {t}k+1 frames (e.g. 49; the VAE "
                       f"compresses time {t}x after the first frame)")
    for name, size in (("height", height), ("width", width)):
      if size < s * p or size % (s * p):
        raise ValueError(f"{name}={size}: expected a positive multiple of {s * p} (VAE {s}x, "
                         f"patch {p})")
    return (self.latent_frames(num_frames)[0], self.transformer.config.in_channels,
            height // s, width // s)

  # ---- steps

  def _context(self):
    return parallel.use_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def _shard(self, x: jax.Array, axis: int = 0) -> jax.Array:
    if self.mesh is None:
      return x
    parallel.check_divisible(self.mesh, batch=x.shape[axis])
    return jax.device_put(x, _batch_sharding(self.mesh, x.ndim, axis))

  def encode_prompts(self, prompts: Sequence[str], negative_prompt: str = ""
                     ) -> tuple[jax.Array, jax.Array]:
    """(cond, uncond), each `[B, 226, D_text]`: one T5 call, the negative prompt encoded once and
    repeated. With a mesh, B must be a multiple of `batch_ways` (`generate` pads)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
      raise ValueError("no prompts to encode")
    ids = self.tokenizer.encode(prompts + [negative_prompt])
    n = len(prompts)
    pad = (-(n + 1)) % self.batch_ways
    ids = np.concatenate([ids, np.repeat(ids[-1:], pad, axis=0)]) if pad else ids
    graphdef, state = self._t5
    with self._context():
      embeds = _encode_ids(graphdef, state, self._shard(jnp.asarray(ids)), dtype=self.dtype)
      cond = self._shard(embeds[:n])
      uncond = self._shard(jnp.broadcast_to(embeds[n:n + 1], cond.shape))
    return cond, uncond

  def sample_latents(self, cond: jax.Array, uncond: jax.Array | None, seeds: Sequence[int], *,
                     num_frames: int = 49, height: int = 480, width: int = 720,
                     num_steps: int = 50, guidance_scale: float = 6.0,
                     use_dynamic_cfg: bool = False, sampler: str = "dpm",
                     latents: jax.Array | None = None,
                     step_noise: jax.Array | None = None) -> jax.Array:
    """Denoised latents `[B, F_lat, C, H/8, W/8]` (1.5: front padding frames included).

    `latents` (initial noise) and `step_noise` (`[num_steps, B, ...]`, DPM) replace the draws from
    `seeds`, as diffusers' `latents=` does; parity tests use them. DPM's per-prompt step noise is
    drawn up front: num_steps x one latent per prompt (2B, 49 frames, bf16: 112 MB a prompt).
    """
    b = cond.shape[0]
    seeds = list(seeds)
    if len(seeds) != b:
      raise ValueError(f"{len(seeds)} seeds for {b} prompts: expected one seed per prompt")
    shape = self.latent_shape(num_frames, height, width)
    need_steps = sampler == "dpm" and step_noise is None
    init, steps = draw_noise(seeds, shape, self.dtype, num_steps if need_steps else 0,
                             mesh=self.mesh)
    if latents is not None:
      if tuple(latents.shape) != (b, *shape):
        raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {(b, *shape)} for "
                         f"{num_frames} frames at {height}x{width}")
      init = self._shard(jnp.asarray(latents, self.dtype))
    if step_noise is not None:
      steps = self._shard(jnp.asarray(step_noise), axis=1)
    with self._context():
      return samplers.sample(self.transformer, init, cond, uncond, schedule=self.schedule,
                             num_steps=num_steps, guidance_scale=guidance_scale,
                             use_dynamic_cfg=use_dynamic_cfg, sampler=sampler,
                             noise=steps if sampler == "dpm" else None)

  def decode(self, latents: jax.Array, num_frames: int | None = None, *,
             batch_size: int | None = None) -> jax.Array:
    """Latents `[B, F_lat, C, h, w]` -> video `[B, 3, F, H, W]` float32 in [-1, 1].

    Drops 1.5's front padding frames (given `num_frames`), undoes the latent scaling and decodes
    `batch_size` videos at a time (default: all; like diffusers' VAE slicing when small).
    """
    drop = self.latent_frames(num_frames)[1] if num_frames is not None else 0
    z = latents[:, drop:].astype(jnp.float32).transpose(0, 2, 1, 3, 4)
    z = z * jnp.float32(1.0 / self.scaling_factor)  # diffusers: 1 / sf * latents
    b = z.shape[0]
    step = batch_size or b
    with self._context():
      parts = [self.vae.decode(z[i:i + step]) for i in range(0, b, step)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

  def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, num_frames: int = 49,
               height: int = 480, width: int = 720, num_steps: int = 50,
               guidance_scale: float = 6.0, use_dynamic_cfg: bool = False, sampler: str = "dpm",
               negative_prompt: str = "", pad_to: int | None = None,
               decode_batch_size: int | None = None, latents: jax.Array | None = None,
               step_noise: jax.Array | None = None) -> jax.Array:
    """prompts + one seed each -> videos `[B, 3, F, H, W]` float32 in [-1, 1].

    The batch is padded (last prompt repeated) to `pad_to` and then to a multiple of the mesh's
    batch ways, so every call of a job can share one compiled program; the padding is dropped.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = list(seeds)
    n = len(prompts)
    if n == 0:
      raise ValueError("no prompts")
    if len(seeds) != n:
      raise ValueError(f"{len(seeds)} seeds for {n} prompts: expected one seed per prompt")
    if sampler not in samplers.SAMPLERS:
      raise ValueError(f"sampler={sampler!r}: expected one of {samplers.SAMPLERS}")
    self.latent_shape(num_frames, height, width)  # bad sizes fail before any work
    _check_seeds(seeds)
    total = max(n, pad_to or 0)
    total += (-total) % self.batch_ways
    pad = total - n
    cond, uncond = self.encode_prompts(_pad_rows(prompts, pad), negative_prompt)
    out = self.sample_latents(
        cond, uncond if guidance_scale > 1.0 else None, _pad_rows(seeds, pad),
        num_frames=num_frames, height=height, width=width, num_steps=num_steps,
        guidance_scale=guidance_scale, use_dynamic_cfg=use_dynamic_cfg, sampler=sampler,
        latents=_pad_rows(latents, pad), step_noise=_pad_rows(step_noise, pad, axis=1))
    video = self.decode(out, num_frames, batch_size=decode_batch_size)
    return video[:n]


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class PipelinePaths:
  """Where each component comes from (checked to exist and to be readable)."""
  transformer: str
  vae: str
  text_encoder: str
  tokenizer: str
  scheduler: str | None  # a scheduler_config.json, or None: the preset schedule

  def to_json(self) -> dict[str, str | None]:
    return dataclasses.asdict(self)


def _check_weights(what: str, path: str, spec: ModelSpec) -> None:
  """A component path exists and its config and safetensors headers read: cheap, before loading."""
  if not path:
    raise CheckpointError(f"no {what} checkpoint given (set it, or a pipeline root holding "
                          f"{spec.subfolder}/)")
  if not os.path.exists(path):
    raise CheckpointError(f"{what} checkpoint {path}: does not exist")
  spec.config(path)  # names a missing or bad config.json / lift_jax.json
  if store.is_converted(path):
    if not os.path.isdir(os.path.join(path, "params")):
      raise CheckpointError(f"{what} checkpoint {path}: converted checkpoint without params/")
    return
  WeightFolder(spec.folder(path))  # opens every shard's header: a truncated file is named here


def _scheduler_file(path: str) -> str:
  for candidate in (path, os.path.join(path, "scheduler_config.json"),
                    os.path.join(path, "scheduler", "scheduler_config.json")):
    if os.path.isfile(candidate):
      return candidate
  raise CheckpointError(f"scheduler {path}: no scheduler_config.json there or in scheduler/")


def resolve_paths(root: str | None = None, *, transformer: str | None = None,
                  vae: str | None = None, text_encoder: str | None = None,
                  tokenizer: str | None = None, scheduler: str | None = None) -> PipelinePaths:
  """Each component's path (given, else the pipeline `root`), checked without loading weights.

  Components may be diffusers folders or converted checkpoints. The tokenizer defaults to `root`,
  then to the text encoder's folder; the scheduler to `root/scheduler/` when present.
  """
  if root is not None and not os.path.isdir(root):
    raise CheckpointError(f"pipeline root {root}: does not exist")
  paths = dict(transformer=transformer or root, vae=vae or root, text_encoder=text_encoder or root)
  _check_weights("transformer", paths["transformer"], cogvideox_params.SPEC)
  _check_weights("VAE", paths["vae"], vae_params.SPEC)
  _check_weights("text encoder", paths["text_encoder"], t5_params.SPEC)
  tok = tokenizer or root or paths["text_encoder"]
  tok_lib.resolve_folder(tok)  # names a missing folder or missing tokenizer files
  sched = None
  if scheduler:
    sched = _scheduler_file(scheduler)
  elif root is not None and os.path.isfile(os.path.join(root, "scheduler", "scheduler_config.json")):
    sched = os.path.join(root, "scheduler", "scheduler_config.json")
  return PipelinePaths(transformer=paths["transformer"], vae=paths["vae"],
                       text_encoder=paths["text_encoder"], tokenizer=tok, scheduler=sched)


def load_schedule(path: str | None, preset: str | NoiseSchedule | None = None) -> NoiseSchedule:
  """From a scheduler_config.json; else the preset ("2b": SNR shift 3, "5b"/1.5: shift 1)."""
  if path:
    try:
      with open(path) as f:
        config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
      raise CheckpointError(f"{path}: unreadable scheduler config ({err})") from err
    try:
      return NoiseSchedule.from_diffusers_config(config)
    except (TypeError, ValueError) as err:
      raise CheckpointError(f"{path}: {err}") from err
  if isinstance(preset, NoiseSchedule):
    return preset
  if preset not in SCHEDULE_PRESETS:
    raise CheckpointError(f"no scheduler config found and schedule={preset!r}: pass a "
                          f"scheduler_config.json or one of {sorted(SCHEDULE_PRESETS)}")
  return SCHEDULE_PRESETS[preset]()


def load_pipeline(root: str | None = None, *, transformer: str | None = None,
                  vae: str | None = None, text_encoder: str | None = None,
                  tokenizer: str | None = None, scheduler: str | None = None,
                  schedule: str | NoiseSchedule | None = None, dtype: str = "float32",
                  param_dtype: str | None = None, vae_dtype: str | None = None,
                  text_encoder_dtype: str | None = None, mesh: Mesh | None = None,
                  attention_impl: str = "auto", vae_tiling: bool = False,
                  max_sequence_length: int = tok_lib.MAX_LENGTH,
                  progress: bool = False) -> TextToVideo:
  """A `TextToVideo` from a diffusers pipeline folder (transformer/, vae/, text_encoder/,
  tokenizer/, scheduler/) and/or component paths (diffusers folders or converted checkpoints).

  Every path is checked (configs, safetensors headers) before any weights are read, so a missing
  or corrupt file is named at once. `schedule` ("2b" / "5b" / a NoiseSchedule) is used when there
  is no scheduler_config.json. `dtype` ("auto": bf16 on accelerators) is the compute dtype of all
  three models unless `vae_dtype` / `text_encoder_dtype` say otherwise; with `mesh`, weights go
  straight onto their shards and `generate` shards the prompt batch. `max_sequence_length` is
  the T5 token count, diffusers' argument of the same name: 226 for the published models (2B's
  learned positions need it); a 3D-RoPE transformer takes any length.
  """
  paths = resolve_paths(root, transformer=transformer, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, scheduler=scheduler)
  noise_schedule = load_schedule(paths.scheduler, schedule)
  dtype = resolve_dtype(dtype)
  tok = CogVideoXTokenizer.from_pretrained(paths.tokenizer, max_length=max_sequence_length)
  tr = load_transformer(paths.transformer, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                        attention_impl=attention_impl, progress=progress)
  vae_model = load_vae(paths.vae, dtype=resolve_dtype(vae_dtype or dtype), mesh=mesh,
                       progress=progress)
  if vae_tiling:
    vae_model.enable_tiling()
  t5 = load_encoder(paths.text_encoder, dtype=resolve_dtype(text_encoder_dtype or dtype),
                    param_dtype=param_dtype, mesh=mesh, attention_impl=attention_impl,
                    progress=progress)
  return TextToVideo(tok, t5, tr, vae_model, noise_schedule, mesh=mesh, paths=paths.to_json())

"""The device suite's PyTorch sections: the same work in diffusers + torch, for the ratios.

Same configs as the JAX sections (the diffusers config dicts in the plan come from our config
classes), random weights, the same shapes. Training as a diffusers user would set it up: fp32
weights, bf16 autocast, SDPA flash attention, gradient checkpointing, AdamW on the blocks.
"""

from __future__ import annotations

import contextlib
import time

import diffusers
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from suite_common import bytes_to_gib, stats, timed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
  torch.set_num_threads(1)  # the CPU smoke run shares small machines: no thread oversubscription


def _sync(x=None):
  if DEVICE == "cuda":
    torch.cuda.synchronize()
  return x


def _peak_gib() -> float | None:
  return bytes_to_gib(torch.cuda.max_memory_allocated()) if DEVICE == "cuda" else None


# SDPA is held to the flash kernel on CUDA; if flash refuses the inputs the first call says so,
# and the section goes on with PyTorch's own choice, recorded as "sdpa" in its results.
SDPA = {"backend": "flash" if DEVICE == "cuda" else "default (CPU)"}


def _flash():
  if SDPA["backend"] != "flash":
    return contextlib.nullcontext()
  from torch.nn.attention import SDPBackend, sdpa_kernel
  return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def _first_call(rec, fn):
  """Seconds of the first call of `fn` (the flash-only retry described above included)."""
  start = time.perf_counter()
  try:
    _sync(fn())
  except RuntimeError as err:
    if SDPA["backend"] != "flash" or "kernel" not in str(err).lower():
      raise
    SDPA["backend"] = f"default: flash-only refused ({str(err)[:300]})"
    _sync(fn())
  rec.put("sdpa", SDPA["backend"])
  return time.perf_counter() - start


def _dtype(plan) -> torch.dtype:
  return getattr(torch, plan["dtype"])


def _environment() -> dict:
  return {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": DEVICE,
          "device_name": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"}


def _transformer(plan, name: str) -> CogVideoXTransformer3DModel:
  torch.manual_seed(0)
  with torch.device(DEVICE):
    return CogVideoXTransformer3DModel.from_config(plan["models"][name])


def _rope(model, frames: int, h: int, w: int):
  """The 3D RoPE tables diffusers' CogVideoX pipeline makes (5B); None for 2B."""
  c = model.config
  if not c.use_rotary_positional_embeddings:
    return None
  p = c.patch_size
  grid = (h // p, w // p)
  crops = get_resize_crop_region_for_grid(grid, c.sample_width // p, c.sample_height // p)
  return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=crops,
                                 grid_size=grid, temporal_size=frames, device=DEVICE)


# ----------------------------------------------------------------------------- train step


def section_train_torch(rec, plan) -> None:
  shapes = plan["shapes"]
  f, c, h, w = shapes["latents"]
  s, b = shapes["text_len"], 1
  rec.put("environment", _environment())
  start = time.perf_counter()
  model = _transformer(plan, "2b")
  model.enable_gradient_checkpointing()
  model.train()
  params = []
  for n, p in model.named_parameters():
    p.requires_grad_(n.startswith("transformer_blocks"))
    if p.requires_grad:
      params.append(p)
  opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4,
                          fused=DEVICE == "cuda")
  dtype = _dtype(plan)
  rec.put("setup", {"model": "2b", "batch": b, "latents_FCHW": [f, c, h, w], "text_len": s,
                    "recipe": f"fp32 weights, {dtype} autocast, SDPA flash, gradient "
                              "checkpointing, fused AdamW on transformer_blocks",
                    "init_s": time.perf_counter() - start})
  gen = torch.Generator(DEVICE).manual_seed(0)
  x0 = torch.randn(b, f, c, h, w, device=DEVICE, generator=gen)
  text = torch.randn(b, s, model.config.text_embed_dim, device=DEVICE, generator=gen)
  reward = torch.full((b,), 0.5, device=DEVICE)
  alphas = torch.linspace(0.9999, 0.01, 1000, device=DEVICE)
  rope = _rope(model, f, h, w)

  def step():
    t = torch.randint(0, 1000, (b,), device=DEVICE, generator=gen)
    eps = torch.randn(x0.shape, device=DEVICE, generator=gen)
    a = alphas[t].view(-1, 1, 1, 1, 1)
    xt, v = a.sqrt() * x0 + (1 - a).sqrt() * eps, a.sqrt() * eps - (1 - a).sqrt() * x0
    with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32), _flash():
      pred = model(hidden_states=xt, encoder_hidden_states=text, timestep=t,
                   image_rotary_emb=rope, return_dict=False)[0]
    loss = (reward * ((pred.float() - v) ** 2).mean(dim=(1, 2, 3, 4))).mean()
    opt.zero_grad(set_to_none=True)
    with _flash():  # checkpointing recomputes the forward here: the same attention kernel
      loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss

  rec.put("first_step_s", _first_call(rec, step))
  times = timed(step, shapes["train_steps"], _sync)
  rec.put("step", stats(times))
  rec.put("peak_memory_gib", _peak_gib())


# ----------------------------------------------------------------------------- sampling


def _generate(rec, plan, name: str) -> None:
  shapes = plan["shapes"]
  f, c, h, w = shapes["latents"]
  s = shapes["text_len"]
  rec.put("environment", _environment())
  dtype = _dtype(plan)
  model = _transformer(plan, name).to(dtype).eval()
  gen = torch.Generator(DEVICE).manual_seed(0)
  x = torch.randn(2, f, c, h, w, device=DEVICE, generator=gen, dtype=dtype)
  text = torch.randn(2, s, model.config.text_embed_dim, device=DEVICE, generator=gen,
                     dtype=dtype)
  t = torch.full((2,), 500, device=DEVICE)
  rope = _rope(model, f, h, w)
  rec.put("setup", {"model": name, "cfg_batch": 2, "latents_FCHW": [f, c, h, w],
                    "text_len": s, "what": f"transformer forward, {dtype} weights, SDPA flash"})

  @torch.inference_mode()
  def forward():
    with _flash():
      return model(hidden_states=x, encoder_hidden_states=text, timestep=t,
                   image_rotary_emb=rope, return_dict=False)[0]

  rec.put("first_call_s", _first_call(rec, forward))
  times = timed(forward, shapes["reps"], _sync)
  rec.put("denoising_step", stats(times))
  rec.put("video_50_steps_s", 50 * stats(times)["median_ms"] / 1e3)
  rec.put("peak_memory_gib", _peak_gib())


def section_generate_torch(rec, plan) -> None:
  _generate(rec, plan, "2b")


def section_generate_5b_torch(rec, plan) -> None:
  _generate(rec, plan, "5b")


# ----------------------------------------------------------------------------- VAE


def section_vae_torch(rec, plan) -> None:
  shapes = plan["shapes"]
  rec.put("environment", _environment())
  with torch.device(DEVICE):
    vae = AutoencoderKLCogVideoX.from_config(plan["vae"]).to(_dtype(plan)).eval()
  tile = shapes["vae_tile"]
  vae.enable_tiling(*(tile or ()))
  gen = torch.Generator(DEVICE).manual_seed(0)
  z = torch.randn(*shapes["vae_latents"], device=DEVICE, generator=gen, dtype=_dtype(plan))
  rec.put("setup", {"latents_BCFHW": shapes["vae_latents"], "tiled": True, "dtype": plan["dtype"],
                    "tile_sample_min_hw": [vae.tile_sample_min_height, vae.tile_sample_min_width]})

  @torch.inference_mode()
  def decode():
    return vae.decode(z).sample

  start = time.perf_counter()
  video = _sync(decode())
  rec.put("first_call_s", time.perf_counter() - start)
  rec.put("video_shape", list(video.shape))
  del video
  if DEVICE == "cuda":
    torch.cuda.reset_peak_memory_stats()
  rec.put("decode", stats(timed(decode, shapes["vae_reps"], _sync)))
  rec.put("peak_memory_gib", _peak_gib())


SECTIONS = {"train_torch": section_train_torch, "generate_torch": section_generate_torch,
            "generate_5b_torch": section_generate_5b_torch, "vae_torch": section_vae_torch}

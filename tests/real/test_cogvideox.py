"""CogVideoX at the published widths (depth cut): the five transformers and the VAE, stored in the
hub's dtype in diffusers' layout (`save_pretrained`), loaded by `cogvideox.load_transformer` /
`load_vae` and through the converter, against diffusers re-reading the same files in fp32."""

import gc
import json
import os
import time

import jax.numpy as jnp
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from flax import nnx

from lift_jax.models import cogvideox
from tests.models.test_cogvideox_transformer import make_inputs, run_reference
from tests.real import hub
from tests.reference import rel_err

# (layers, latent frames, height, width): off every sample_* size; the 5B-I2V's learned position
# table pins its height and width to 60x90 (diffusers refuses others), so only its frames differ.
CASES = {
    "cogvideox-2b": (1, 3, 6, 10),
    "cogvideox-5b": (1, 3, 8, 6),
    "cogvideox-5b-i2v": (1, 1, 60, 90),
    "cogvideox1.5-5b": (1, 4, 6, 10),
    "cogvideox1.5-5b-i2v": (1, 2, 10, 6),
}


@nnx.jit(graph_updates=False)  # read-only: no copy of the weights as outputs
def _forward(model, latents, text, timesteps, ofs):
  return model(latents, text, timesteps, ofs=ofs)


def run_ours(model, latents, text, timesteps, ofs):
  to_j = lambda t: None if t is None else jnp.asarray(t.numpy())
  return _forward(model, to_j(latents), to_j(text), to_j(timesteps), to_j(ofs))


def _saved(module, folder, dtype):
  """`save_pretrained` in the hub's dtype; the caller's fp32 module is dropped."""
  module.to(dtype).save_pretrained(folder)
  return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_transformer_at_real_widths(name, tmp_path):
  start = time.perf_counter()
  layers, frames, height, width = CASES[name]
  kw = dict(hub.COGVIDEOX[name], num_layers=layers)
  torch.manual_seed(0)
  folder = _saved(hub.perturb_constants_(CogVideoXTransformer3DModel(**kw).eval()),
                  str(tmp_path / "transformer"), hub.HUB_DTYPE.get(name, torch.bfloat16))
  ref = CogVideoXTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
  inputs = make_inputs(kw, frames, height, width, batch=1)
  want = run_reference(ref, kw, *inputs).numpy()
  del ref
  gc.collect()
  errs = {}
  model = cogvideox.load_transformer(folder)
  assert model.config.num_attention_heads * model.config.attention_head_dim == (
      kw["num_attention_heads"] * 64)
  errs["folder"] = rel_err(run_ours(model, *inputs), want)
  del model
  gc.collect()
  model = cogvideox.load_transformer(hub.converted("cogvideox-transformer", folder,
                                                   str(tmp_path / "converted")))
  errs["converted"] = rel_err(run_ours(model, *inputs), want)
  hub.report(f"{name} transformer ({layers} layers, latents {frames}x{height}x{width})", start,
             **errs)
  assert max(errs.values()) <= 1e-5, errs


@pytest.mark.slow
def test_vae_full_depth_on_a_9_frame_clip(tmp_path):
  """The published VAE (all four blocks, three layers each) in bf16: encode a 9-frame clip,
  decode a latent; fp32 parity <= 1e-4 through the whole VAE."""
  start = time.perf_counter()
  torch.manual_seed(0)
  folder = _saved(hub.perturb_constants_(AutoencoderKLCogVideoX(**hub.VAE_5B).eval()),
                  str(tmp_path / "vae"), torch.bfloat16)
  ref = AutoencoderKLCogVideoX.from_pretrained(folder, torch_dtype=torch.float32).eval()
  gen = torch.Generator().manual_seed(1)
  video = torch.rand((1, 3, 9, 32, 48), generator=gen) * 2 - 1
  with torch.no_grad():
    dist = ref.encode(video).latent_dist
    z = dist.mean + 0.5 * torch.randn(dist.mean.shape, generator=gen)
    want = dict(mean=dist.mean.numpy(), logvar=dist.logvar.numpy(),
                decode=ref.decode(z).sample.numpy())
  del ref
  gc.collect()
  errs = {}
  for how, path in (("folder", folder),
                    ("converted", hub.converted("cogvideox-vae", folder, str(tmp_path / "conv")))):
    vae = cogvideox.load_vae(path)
    mean, logvar = vae.encode(jnp.asarray(video.numpy()))
    out = vae.decode(jnp.asarray(z.numpy()))
    errs.update({f"{how} mean": rel_err(mean, want["mean"]),
                 f"{how} logvar": rel_err(logvar, want["logvar"]),
                 f"{how} decode": rel_err(out, want["decode"])})
    del vae
    gc.collect()
  hub.report("CogVideoX VAE (5B config, full depth, 9x32x48 clip)", start, **errs)
  assert z.shape == (1, 16, 3, 4, 6)
  assert max(errs.values()) <= 1e-4, errs


def test_written_configs_are_the_published_ones(real_assets):
  """The config values above are the published config.json files (where the assets hold them)."""
  folder = os.path.join(real_assets, "configs")
  pairs = {"cogvideox-2b.transformer.config.json": hub.COGVIDEOX["cogvideox-2b"],
           "cogvideox-5b.transformer.config.json": hub.COGVIDEOX["cogvideox-5b"],
           "cogvideox-5b-i2v.transformer.config.json": hub.COGVIDEOX["cogvideox-5b-i2v"],
           "cogvideox-5b.vae.config.json": hub.VAE_5B}
  for name, ours in pairs.items():
    with open(os.path.join(folder, name)) as f:
      published = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    assert published == ours, name

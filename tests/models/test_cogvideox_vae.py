"""CogVideoX VAE: parity with diffusers (chunked encode/decode, tiling), loading, conversion, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX as TorchVAE
from flax import nnx

from lift_jax import parallel
from lift_jax.checkpoint import CheckpointError, read_meta
from lift_jax.checkpoint.safetensors import WeightFolder, write_safetensors
from lift_jax.models.cogvideox import vae as vae_lib
from lift_jax.models.cogvideox.vae import CogVideoXVAEConfig
from lift_jax.models.cogvideox.vae_params import load_vae, save_vae
from tests.reference import perturb_, rel_err, save_sharded

# Four blocks, so compression is the real 4x in time and 8x in space, at a tiny width.
TINY = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=4,
            latent_channels=16, norm_eps=1e-5, sample_height=16, sample_width=24)
# (batch, frames, height, width): 17 frames = chunks 9+8 in, 5 latents = chunks 3+2 out;
# 13 frames -> 4 latents = chunks 2+2 out. Cases share chunk shapes where they can, so the eager
# path's per-chunk programs are compiled once (9 frames at B2 16x24, 2 latents at B1 3x2).
CASES = [(2, 1, 16, 24), (1, 5, 24, 16), (2, 9, 16, 24), (1, 13, 24, 16), (2, 17, 16, 24)]
# Full tiles of 16x24 pixels / 2x3 latents at batch 2 reuse the parity cases' chunk programs.
TILING = dict(tile_sample_min_height=16, tile_sample_min_width=24,
              tile_overlap_factor_height=1 / 4, tile_overlap_factor_width=1 / 3)
TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """The perturbed torch reference, saved as a pipeline root holding vae/, loaded by `load_vae`."""
  torch.manual_seed(0)
  ref = perturb_(TorchVAE(**TINY)).eval()
  root = tmp_path_factory.mktemp("pipeline")
  save_sharded(ref, str(root / "vae"), dict(ref.config), shards=2)
  return ref, load_vae(str(root)), str(root)


def _video(shape, seed):
  gen = torch.Generator().manual_seed(seed)
  return torch.rand(shape, generator=gen) * 2 - 1


@pytest.mark.parametrize("case", CASES, ids=[f"B{b}F{f}_{h}x{w}" for b, f, h, w in CASES])
def test_encode_decode_parity(models, case):
  ref, vae, _ = models
  b, f, h, w = case
  video = _video((b, 3, f, h, w), seed=f)
  with torch.no_grad():
    dist = ref.encode(video).latent_dist
    z = dist.mean + 0.5 * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(1))
    out = ref.decode(z).sample
  mean, logvar = vae.encode(jnp.asarray(video.numpy()))
  errs = {"mean": rel_err(mean, dist.mean), "logvar": rel_err(logvar, dist.logvar)}
  decoded = vae.decode(jnp.asarray(z.numpy()))
  errs["decode"] = rel_err(decoded, out)
  print(f"{case} latents {tuple(z.shape)} -> {tuple(out.shape)}: {errs}")
  assert mean.dtype == jnp.float32 and decoded.shape == tuple(out.shape)
  assert max(errs.values()) <= TOL, errs


def test_tiled_parity(models):
  """Tiny tiles on both sides. Encode: a 3x3 grid (heights 16, 16, 8; widths 24, 24, 16).
  Decode: a 3x2 grid of four tile shapes, vertical and horizontal blends chained in place."""
  ref, vae, _ = models
  ours = nnx.clone(vae)
  ours.enable_tiling(**TILING)
  ref.enable_tiling(**TILING)
  try:
    video = _video((2, 3, 9, 32, 48), seed=3)
    z = torch.randn(2, 16, 3, 3, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
      dist = ref.encode(video).latent_dist
      out = ref.decode(z).sample
  finally:
    ref.disable_tiling()
  mean, logvar = ours.encode(jnp.asarray(video.numpy()))
  decoded = ours.decode(jnp.asarray(z.numpy()))
  errs = {"mean": rel_err(mean, dist.mean), "logvar": rel_err(logvar, dist.logvar),
          "decode": rel_err(decoded, out)}
  print(f"tiled: {tuple(dist.mean.shape)}, {tuple(out.shape)}: {errs}")
  assert max(errs.values()) <= TOL, errs
  # Tiles really ran (diffusers' tiled decode stitches 32x32 pixels from 3x4 latents, not 24x32),
  # and the shared model is unaffected by the clone's switch.
  assert decoded.shape[-2:] == (32, 32) and not vae.use_tiling


def test_traced_path_matches_eager(models):
  """Under jit the chunks run as chunk 0 + lax.scan and same-shape tiles under lax.map; the eager
  path (checked against diffusers above) loops in Python. Same numbers, checked on a small chunk
  function (a causal conv + GroupNorm, so the carried cache matters) to keep compiles cheap."""
  _, vae, _ = models
  conv = vae_lib.CausalConv3d(3, 4, rngs=nnx.Rngs(0))
  norm = vae_lib.GroupNorm(4, 2, 1e-6)

  def fn(chunk, cache):
    y, cache = conv(chunk, cache)
    return norm(y), cache

  x = jax.random.normal(jax.random.key(0), (2, 17, 11, 13, 3))
  tiles = dict(tile=(5, 6), step=(4, 4), blend=(2, 3), keep=(3, 4))
  step = jax.jit(fn)  # as the model's eager path does: one compiled program per chunk shape
  eager = vae_lib.run_in_tiles(lambda v: vae_lib.run_in_chunks(step, v, 8, scan=False), x,
                               **tiles, stack=False)
  traced = jax.jit(lambda v: vae_lib.run_in_tiles(
      lambda t: vae_lib.run_in_chunks(fn, t, 8, scan=True), v, **tiles, stack=True))(x)
  assert eager.shape == traced.shape == (2, 17, 9, 13, 4)
  np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), rtol=0, atol=1e-5)
  # The model picks the traced form under a trace (here: 5 latents = chunks 3 + 2).
  jaxpr = str(jax.make_jaxpr(lambda z: vae.decode(z))(jnp.zeros((1, 16, 5, 2, 3))))
  assert "scan" in jaxpr and "run_chunk" not in jaxpr


def test_tiling_defaults_match_diffusers(models):
  _, vae, _ = models
  ref = TorchVAE(**TINY)
  ref.enable_tiling()
  ours = nnx.clone(vae)
  ours.enable_tiling()
  for name in ("tile_sample_min_height", "tile_sample_min_width", "tile_latent_min_height",
               "tile_latent_min_width", "tile_overlap_factor_height", "tile_overlap_factor_width",
               "num_sample_frames_batch_size", "num_latent_frames_batch_size"):
    assert getattr(ours, name) == getattr(ref, name), name


def test_bf16_decode_close(models):
  """bf16 compute with fp32 GroupNorm statistics; the error is reported, loosely bounded."""
  ref, _, root = models
  vae16 = load_vae(root, dtype="bfloat16")
  assert vae16.decoder.conv_in.kernel.dtype == jnp.bfloat16
  z = torch.randn(1, 16, 1, 2, 3, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    out = ref.decode(z).sample
  err = rel_err(vae16.decode(jnp.asarray(z.numpy())), out)
  print(f"bf16 decode rel err {err:.2e}")
  assert err < 5e-2


def test_converted_roundtrip(models, tmp_path):
  _, vae, _ = models
  dst = save_vae(vae, str(tmp_path / "converted"))
  assert read_meta(dst)["kind"] == "cogvideox-vae"
  back = load_vae(dst)
  assert back.config == vae.config
  a = nnx.to_flat_state(nnx.state(vae, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(back, nnx.Param)))
  assert len(a) == len(b)
  for path, var in a:
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(b[path][...]), err_msg=str(path))
  with pytest.raises(FileExistsError):
    save_vae(vae, dst)


def test_sharded_load_places_params(models):
  _, _, root = models
  mesh = parallel.make_mesh({"fsdp": 8})
  vae = load_vae(root, mesh=mesh)
  kernel = vae.decoder.up_blocks[0].resnets[0].conv1.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, None, "fsdp")
  assert set(vae.decoder.conv_out.kernel[...].sharding.spec) == {None}  # 3 RGB channels: replicated


def test_bad_inputs(models):
  _, vae, _ = models
  with pytest.raises(ValueError, match="video has 4 channels.*expected 3"):
    vae.encode(jnp.zeros((1, 4, 1, 16, 16)))
  with pytest.raises(ValueError, match=r"z has 8 channels.*expected 16"):
    vae.decode(jnp.zeros((1, 8, 1, 2, 2)))
  with pytest.raises(ValueError, match=r"must be \[B, C, F, H, W\]"):
    vae.encode(jnp.zeros((1, 3, 16, 16)))


def test_checkpoint_mismatch_names_every_key(models, tmp_path):
  _, _, root = models
  folder = WeightFolder(os.path.join(root, "vae"))
  tensors = {k: folder.read(k) for k in folder.keys()}
  del tensors["decoder.norm_out.conv_b.conv.bias"]
  tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
  tensors["encoder.conv_in.conv.weight"] = np.zeros((16, 4, 3, 3, 3), np.float32)
  bad = tmp_path / "bad"
  bad.mkdir()
  write_safetensors(str(bad / "diffusion_pytorch_model.safetensors"), tensors)
  with open(os.path.join(root, "vae", "config.json")) as f:
    (bad / "config.json").write_text(f.read())
  with pytest.raises(CheckpointError) as err:
    load_vae(str(bad))
  msg = str(err.value)
  for key in ("decoder.norm_out.conv_b.conv.bias", "encoder.extra.weight",
              "encoder.conv_in.conv.weight"):
    assert key in msg, msg


def test_config_roundtrip_and_errors(models):
  ref, _, _ = models
  cfg = CogVideoXVAEConfig.from_diffusers_config(dict(ref.config))
  assert cfg.block_out_channels == (16, 32, 32, 32) and cfg.norm_eps == 1e-5
  assert CogVideoXVAEConfig.from_diffusers_config(cfg.to_diffusers_config()) == cfg
  # Lists vs tuples and diffusers' bookkeeping keys aside, diffusers rebuilds the same config.
  as_json = lambda c: {k: v for k, v in json.loads(json.dumps(dict(c))).items() if k[0] != "_"}
  assert as_json(TorchVAE.from_config(cfg.to_diffusers_config()).config) == as_json(ref.config)
  assert CogVideoXVAEConfig.cogvideox_2b().scaling_factor == 1.15258426
  assert CogVideoXVAEConfig.cogvideox_5b().scaling_factor == 0.7
  with pytest.raises(ValueError, match="act_fn"):
    CogVideoXVAEConfig.from_diffusers_config({**dict(ref.config), "act_fn": "relu"})
  with pytest.raises(ValueError, match="use_quant_conv"):
    CogVideoXVAEConfig.from_diffusers_config({**dict(ref.config), "use_quant_conv": True})
  with pytest.raises(ValueError, match="norm_num_groups"):
    CogVideoXVAEConfig(**{**TINY, "norm_num_groups": 5}).validate()

"""Export to the upstream PyTorch layouts: random NNX model -> export -> our loader gives identical
parameters, and the upstream class (diffusers / transformers `from_pretrained`) our outputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from lift_jax.checkpoint import tables
from lift_jax.models import critic, llama, siglip, t5
from lift_jax.models.cogvideox import vae as vae_lib
from lift_jax.models.cogvideox import vae_params
from lift_jax.models.critic import export as critic_export
from lift_jax.models.llama import params as llama_params
from lift_jax.models.siglip import params as siglip_params
from lift_jax.models.t5 import params as t5_params
from tests.reference import rel_err

TOL = 1e-5


def rngs(seed: int) -> nnx.Rngs:
  """The `rbg` generator: eager init compiles ~6x faster than threefry on CPU."""
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def randomize(model: nnx.Module, seed: int, scale: float = 0.1) -> nnx.Module:
  """Moves every parameter off its init (zero biases, unit scales), so a wrong inverse shows.
  On the host: no per-shape programs to compile."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  nnx.update(model, jax.tree.unflatten(treedef, [
      jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape).astype(x.dtype))
      for x in leaves]))
  return model


def assert_same_params(a: nnx.Module, b: nnx.Module):
  fa, fb = tables.flat_variables(nnx.state(a)), tables.flat_variables(nnx.state(b))
  assert sorted(fa) == sorted(fb)
  for path, var in fa.items():
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(fb[path][...]), err_msg=path)


def weight_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".json")))


def test_vae_export(tmp_path):
  from diffusers import AutoencoderKLCogVideoX

  cfg = vae_lib.CogVideoXVAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                   norm_num_groups=4, latent_channels=4, sample_height=16,
                                   sample_width=16, scaling_factor=0.7)
  model = randomize(vae_lib.AutoencoderKLCogVideoX(cfg, rngs=rngs(0)), 1, 0.05)
  folder = vae_params.export_vae(model, str(tmp_path / "vae"), max_shard_bytes=20_000)
  assert "diffusion_pytorch_model.safetensors.index.json" in os.listdir(folder)
  assert_same_params(model, vae_params.load_vae(str(tmp_path)))  # a pipeline root holding vae/
  with pytest.raises(FileExistsError):
    vae_params.export_vae(model, folder)

  ref = AutoencoderKLCogVideoX.from_pretrained(folder).eval()
  video = np.random.default_rng(0).uniform(-1, 1, (1, 3, 5, 16, 16)).astype(np.float32)
  with torch.no_grad():
    dist = ref.encode(torch.from_numpy(video)).latent_dist
    decoded = ref.decode(dist.mean).sample
  mean, logvar = model.encode(jnp.asarray(video))
  errs = dict(mean=rel_err(mean, dist.mean), logvar=rel_err(logvar, dist.logvar),
              decode=rel_err(model.decode(jnp.asarray(dist.mean.numpy())), decoded))
  print("vae", errs)
  assert max(errs.values()) <= TOL, errs


def test_t5_export(tmp_path):
  from transformers import T5EncoderModel

  cfg = t5.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  model = randomize(t5.T5Encoder(cfg, rngs=rngs(0)), 2)
  folder = t5_params.export_encoder(model, str(tmp_path / "text_encoder"))
  assert weight_files(folder) == ["config.json", "model.safetensors"]
  assert_same_params(model, t5.load_encoder(str(tmp_path)))

  ref = T5EncoderModel.from_pretrained(folder).eval()
  ids = np.random.default_rng(1).integers(0, 64, (2, 12))
  with torch.no_grad():
    want = ref(torch.from_numpy(ids)).last_hidden_state
  err = rel_err(model(jnp.asarray(ids)), want)
  print("t5", err)
  assert err <= TOL


@pytest.mark.parametrize("kind", ["gqa_bias", "tied"])
def test_llama_export(tmp_path, kind):
  from transformers import LlamaForCausalLM

  extra = (dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True) if kind == "gqa_bias"
           else dict(num_key_value_heads=4, tie_word_embeddings=True))
  cfg = llama.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, head_dim=8, max_position_embeddings=64, **extra)
  model = randomize(llama.LlamaForCausalLM(cfg, rngs=rngs(0)), 3)
  folder = llama_params.export(model, str(tmp_path / "llm"), max_shard_bytes=30_000)
  assert "model.safetensors.index.json" in os.listdir(folder)
  assert_same_params(model, llama.load(folder))

  ref = LlamaForCausalLM.from_pretrained(folder).eval()
  ids = np.random.default_rng(2).integers(0, 96, (2, 10))
  with torch.no_grad():
    want = ref(torch.from_numpy(ids)).logits
  err = rel_err(model(jnp.asarray(ids)), want)
  print("llama", kind, err)
  assert err <= TOL


@pytest.mark.parametrize("prefix", ["vision_model.", ""])
def test_siglip_export(tmp_path, prefix):
  from transformers import SiglipVisionModel

  cfg = siglip.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                  num_attention_heads=4, image_size=28, patch_size=14)
  model = randomize(siglip.SiglipVisionModel(cfg, rngs=rngs(0)), 4)
  folder = siglip_params.export(model, str(tmp_path / "vision_tower"), prefix=prefix)
  assert_same_params(model, siglip.load(folder))

  ref = SiglipVisionModel.from_pretrained(folder).eval()
  px = np.random.default_rng(3).uniform(-1, 1, (2, 3, 28, 28)).astype(np.float32)
  with torch.no_grad():
    out = ref(torch.from_numpy(px), output_hidden_states=True)
  errs = (rel_err(model(jnp.asarray(px)), out.last_hidden_state),
          rel_err(model.features(jnp.asarray(px), layer=-2), out.hidden_states[-2]))
  print("siglip", prefix, errs)
  assert max(errs) <= TOL


@nnx.jit
def _critic_logits(model, px, ids, slots, mask):
  return model(px, ids, slots, mask)


def test_vila_export_round_trip(tmp_path):
  from tests.models.test_llama import VOCAB, byte_tokenizer

  tok_dir = str(tmp_path / "tok")
  byte_tokenizer().save_pretrained(tok_dir)
  cfg = critic.VilaConfig(
      llm=llama.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                            head_dim=8, max_position_embeddings=1024),
      vision=siglip.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=42, patch_size=14),
      image=siglip.ImageProcessor(height=42, width=42), select_feature="cls_patch")
  model = randomize(critic.VilaCritic(cfg, rngs=rngs(0)), 5)
  dst = critic_export.export_vila(model, str(tmp_path / "VILA1.5-13b-tiny"), tok_dir)
  assert sorted(os.listdir(dst)) == ["config.json", "llm", "mm_projector", "vision_tower"]
  with open(os.path.join(dst, "config.json")) as f:
    top = json.load(f)
  assert top["mm_projector_cfg"]["mm_projector_type"] == "mlp_downsample"

  loaded = critic.Critic.load(dst)
  assert loaded.config == cfg
  assert_same_params(model, loaded.model)
  rng = np.random.default_rng(4)
  video = rng.integers(0, 256, (12, 30, 50, 3), dtype=np.uint8)
  batch = loaded.batch(["A panda eats bamboo."], "motion issues")
  args = (jnp.asarray(loaded.pixel_values(video)[None]), jnp.asarray(batch.token_ids),
          jnp.asarray(batch.image_slots), jnp.asarray(batch.attention_mask))
  np.testing.assert_array_equal(np.asarray(_critic_logits(model, *args)),
                                np.asarray(_critic_logits(loaded.model, *args)))

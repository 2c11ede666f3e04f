"""The text-to-video pipeline end to end against diffusers' `CogVideoXPipeline` on a tiny random
pipeline folder (T5 + tokenizer + transformer + VAE + scheduler, saved by `save_pretrained`), plus
per-prompt seeds, batch sharding and the loading errors."""

import dataclasses
import io
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler,
                       CogVideoXPipeline, CogVideoXTransformer3DModel)
import diffusers.schedulers.scheduling_dpm_cogvideox as dpm_module

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError
from lift_jax.diffusion import NoiseSchedule, draw_noise, load_pipeline, pipeline
from tests.reference import perturb_, rel_err

PROMPTS = ["a panda playing guitar in a bamboo forest", "waves crashing on a rocky beach",
           "a cat sits on the mat"]
SENTENCES = PROMPTS + ["the quick brown fox jumps over the lazy dog",
                       "two people walking a dog in the park at sunset"]
# 9 frames at 32x48 -> latents 3 x 16 x 4 x 6 -> 3 x 2 x 3 = 18 video tokens (+ 226 text tokens).
FRAMES, HEIGHT, WIDTH = 9, 32, 48
VAE = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=4,
           latent_channels=16, norm_eps=1e-5, sample_height=HEIGHT, sample_width=WIDTH)
T5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
          feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
          relative_attention_max_distance=20, dropout_rate=0.0)
TOL = 1e-4


def train_tokenizer(folder: str):
  """A T5 (sentencepiece unigram) tokenizer trained on a few sentences, CogVideoX's special ids."""
  import sentencepiece as spm
  from transformers import AutoTokenizer
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES * 20), model_writer=buf, vocab_size=60,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
      eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "spiece.model"), "wb") as f:
    f.write(buf.getvalue())
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "T5Tokenizer", "model_max_length": 226, "extra_ids": 0,
               "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, f)
  return AutoTokenizer.from_pretrained(folder)


def build_tiny_pipeline(root: str, layout: str = "2b") -> CogVideoXPipeline:
  """A perturbed random CogVideoX pipeline written with `save_pretrained` (model_index.json,
  transformer/, vae/, text_encoder/, tokenizer/, scheduler/). "2b": sin-cos positions, 226 text
  tokens, SNR shift 3; "5b": 3D RoPE, shift 1, scaling factor 0.7."""
  from transformers import T5Config, T5EncoderModel
  torch.manual_seed(0)
  extra = dict(use_rotary_positional_embeddings=True) if layout == "5b" else {}
  transformer = perturb_(CogVideoXTransformer3DModel(
      num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=T5["d_model"],
      time_embed_dim=32, max_text_seq_length=226, sample_height=HEIGHT // 8,
      sample_width=WIDTH // 8, sample_frames=FRAMES, **extra)).eval()
  vae = perturb_(AutoencoderKLCogVideoX(
      **VAE, scaling_factor=0.7 if layout == "5b" else 1.15258426)).eval()
  text_encoder = perturb_(T5EncoderModel(T5Config(**T5))).eval()
  tokenizer = train_tokenizer(os.path.join(root, "_tokenizer_src"))
  scheduler = CogVideoXDDIMScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
      snr_shift_scale=1.0 if layout == "5b" else 3.0, rescale_betas_zero_snr=True,
      timestep_spacing="trailing", prediction_type="v_prediction", set_alpha_to_one=True,
      clip_sample=False)
  pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                           transformer=transformer, scheduler=scheduler)
  pipe.save_pretrained(root)
  pipe.set_progress_bar_config(disable=True)
  return pipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("CogVideoX-tiny"))
  pipe = build_tiny_pipeline(root, "2b")
  return dict(root=root, pipe=pipe, ours=load_pipeline(root, dtype="float32"))


class NoiseFeeder:
  """Makes the DPM scheduler's `randn_tensor` return our step noise: step i gets noise[i] (both
  draws of a second-order step, as the step keeps only the last)."""

  def __init__(self, monkeypatch, noise):
    self.noise, self.i = np.asarray(noise), 0
    monkeypatch.setattr(dpm_module, "randn_tensor", lambda shape, **kw: self.draw(shape))

  def draw(self, shape):
    out = torch.tensor(self.noise[self.i])
    assert tuple(out.shape) == tuple(shape)
    return out

  def end_step(self, *_):
    self.i += 1
    return {}


def torch_video(pipe, prompts, latents, *, sampler, steps, dynamic, callback=None):
  """`CogVideoXPipeline.__call__` from the prompts (its own tokenizer and T5), our initial noise,
  then the pipeline's own `decode_latents` (the raw VAE output, before clamping to [0, 1])."""
  if sampler == "dpm":
    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
  else:
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
  with torch.no_grad():
    lat = pipe(prompt=prompts, negative_prompt="", height=HEIGHT, width=WIDTH,
               num_frames=FRAMES, num_inference_steps=steps, guidance_scale=6.0,
               use_dynamic_cfg=dynamic, latents=torch.tensor(np.asarray(latents)),
               output_type="latent", return_dict=False, callback_on_step_end=callback)[0]
    return pipe.decode_latents(lat).numpy()


SEEDS = [10, 11]


@pytest.mark.parametrize("sampler,dynamic", [("ddim", False), ("dpm", True)])
def test_video_parity_with_diffusers(tiny, sampler, dynamic, monkeypatch):
  """fp32, 3 steps, CFG 6: prompts -> video through both pipelines, from the same seeds' noise."""
  ours_pipe, steps = tiny["ours"], 3
  shape = ours_pipe.latent_shape(FRAMES, HEIGHT, WIDTH)
  assert shape == (3, 16, 4, 6)
  init, step_noise = draw_noise(SEEDS, shape, jnp.float32, steps if sampler == "dpm" else 0)
  feeder = NoiseFeeder(monkeypatch, step_noise) if sampler == "dpm" else None
  ref = torch_video(tiny["pipe"], PROMPTS[:2], init, sampler=sampler, steps=steps, dynamic=dynamic,
                    callback=feeder.end_step if feeder else None)
  if feeder:
    assert feeder.i == steps
  ours = ours_pipe.generate(PROMPTS[:2], SEEDS, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                            num_steps=steps, guidance_scale=6.0, use_dynamic_cfg=dynamic,
                            sampler=sampler)
  err = rel_err(ours, ref)
  inside = float(np.mean(np.abs(ref) <= 1))
  print(f"{sampler} dynamic={dynamic}: video {ours.shape} rel err {err:.2e} "
        f"({inside:.0%} of values in [-1, 1])")
  assert ours.shape == (2, 3, FRAMES, HEIGHT, WIDTH) and ours.dtype == jnp.float32
  assert err <= TOL


def test_prompt_embeddings_match_the_torch_pipeline(tiny):
  """Our T5 + tokenizer give diffusers' `encode_prompt` (uncond first in CFG, "" negative)."""
  cond, uncond = tiny["ours"].encode_prompts(PROMPTS, "")
  with torch.no_grad():
    ref_cond, ref_uncond = tiny["pipe"].encode_prompt(PROMPTS, "", do_classifier_free_guidance=True)
  assert cond.shape == (3, 226, 32)
  assert max(rel_err(cond, ref_cond), rel_err(uncond, ref_uncond)) <= 1e-5


def test_a_shorter_text_length_matches_diffusers_max_sequence_length(tiny):
  """`max_sequence_length` as diffusers' `encode_prompt` takes it (prompts cut, `</s>` kept)."""
  short = load_pipeline(tiny["root"], dtype="float32", max_sequence_length=9)
  cond, uncond = short.encode_prompts(PROMPTS, "")
  with torch.no_grad():
    ref_cond, ref_uncond = tiny["pipe"].encode_prompt(PROMPTS, "", do_classifier_free_guidance=True,
                                                      max_sequence_length=9)
  assert cond.shape == (3, 9, 32)
  assert max(rel_err(cond, ref_cond), rel_err(uncond, ref_uncond)) <= 1e-5


def test_noise_depends_on_its_own_seed_only():
  shape = (3, 16, 4, 6)
  init, steps = draw_noise([5, 7, 9], shape, jnp.float32, 4)
  init1, steps1 = draw_noise([7], shape, jnp.float32, 4)
  np.testing.assert_array_equal(init[1], init1[0])
  np.testing.assert_array_equal(steps[:, 1], steps1[:, 0])
  assert steps.shape == (4, 3, *shape)
  assert not np.allclose(init[0], init[1]) and not np.allclose(steps[0, 1], steps[1, 1])
  assert not np.allclose(init[1], steps[0, 1])
  np.testing.assert_array_equal(draw_noise([7], shape, jnp.float32)[0][0], init1[0])  # DDIM = DPM
  with pytest.raises(ValueError, match="seeds"):
    draw_noise([-1], shape, jnp.float32)


def test_sharded_padded_batch_equals_unsharded(tiny):
  """2-way data mesh, 3 prompts in another order (padded to 4): each video equals the one the
  unsharded batch of 2 made from the same prompt and seed (made here: no test depends on
  another's state, so this one runs alone and under -n 2)."""
  kw = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_steps=3, guidance_scale=6.0,
            sampler="ddim")
  ref = np.asarray(tiny["ours"].generate(PROMPTS[:2], SEEDS, **kw))
  mesh = parallel.make_mesh({"data": 2}, jax.devices()[:2])
  ours = load_pipeline(tiny["root"], dtype="float32", mesh=mesh)
  assert ours.batch_ways == 2
  video = ours.generate([PROMPTS[1], PROMPTS[2], PROMPTS[0]], [SEEDS[1], 99, SEEDS[0]], **kw)
  assert video.shape[0] == 3
  err = max(rel_err(video[2], ref[0]), rel_err(video[0], ref[1]))
  print(f"sharded vs unsharded: {err:.2e}")
  assert err <= 1e-5


def test_latent_shapes_and_size_errors(tiny):
  ours = tiny["ours"]
  assert ours.latent_shape(49, 480, 720) == (13, 16, 60, 90)
  with pytest.raises(ValueError, match="4k\\+1"):
    ours.latent_shape(48, 480, 720)
  with pytest.raises(ValueError, match="height=100"):
    ours.latent_shape(49, 100, 720)
  # CogVideoX 1.5 (patch_size_t 2): 81 frames -> 21 latent frames, padded to 22 at the front.
  tr15 = types.SimpleNamespace(config=dataclasses.replace(ours.transformer.config, patch_size_t=2))
  ours15 = pipeline.TextToVideo(ours.tokenizer, ours.text_encoder, tr15, ours.vae, ours.schedule)
  assert ours15.latent_frames(81) == (22, 1) and ours15.latent_frames(85) == (22, 0)
  assert ours15.latent_shape(81, 768, 1360) == (22, 16, 96, 170)
  with pytest.raises(ValueError, match="seeds for 2 prompts"):
    ours.generate(PROMPTS[:2], [1], num_frames=FRAMES, height=HEIGHT, width=WIDTH)


def test_missing_and_corrupt_checkpoints(tiny, tmp_path):
  root = tiny["root"]
  with pytest.raises(CheckpointError, match="does-not-exist"):
    load_pipeline(str(tmp_path / "does-not-exist"))
  with pytest.raises(CheckpointError, match="transformer checkpoint .*nowhere.*does not exist"):
    load_pipeline(root, transformer=str(tmp_path / "nowhere"))
  # A truncated safetensors file (an interrupted download) is named before anything loads.
  broken = tmp_path / "vae"
  broken.mkdir()
  (broken / "config.json").write_text(open(os.path.join(root, "vae", "config.json")).read())
  blob = open(os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"), "rb").read()
  (broken / "diffusion_pytorch_model.safetensors").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: truncated"):
    pipeline.resolve_paths(root, vae=str(broken))
  (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
  with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: corrupt"):
    pipeline.resolve_paths(root, vae=str(broken))
  with pytest.raises(CheckpointError, match="scheduler_config.json"):
    pipeline.resolve_paths(root, scheduler=str(tmp_path))
  with pytest.raises(CheckpointError, match="schedule="):
    pipeline.load_schedule(None, None)
  assert pipeline.load_schedule(None, "5b") == NoiseSchedule.cogvideox_5b()
  assert tiny["ours"].schedule == NoiseSchedule.cogvideox_2b()

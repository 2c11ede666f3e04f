"""The two LiFT-Critic bases at their published widths (depth cut), stored bf16 in VILA's folder
layout (config.json, llm/, vision_tower/, mm_projector/), loaded by `critic.load_critic`, the
component loaders (`siglip.load`, `llama.load`, `intern_vit.load`) and through the converter,
against torch references that re-read the saved files in fp32.

VILA1.5-13b: SigLIP-so400m-patch14-384 at 384x384 (the stride-14 convolution floors 384/14: a
27x27 grid, 729 patches), `cls_patch` at layer -2, the 2x2 merge zero-pads 27 -> 28 (196 tokens
per frame) into mlp_downsample to 5120, Llama-2-13B widths. VILA1.5-40b: InternViT-6B-448px-V1-2
(1025 tokens, CLS dropped, 256 per frame of 4*3200), Yi-34B widths (7168, 56 query / 8 kv heads).
Both LLM vocabularies (32,000 and 64,000) are cut to 8,000 rows: at full size the embedding and
head alone hold 1.3 GB (13b) and 3.7 GB (40b) in fp32 per copy, and the 13b case peaked at 7.8 GB
with them; the widths are real. Frames per video are cut to 2 (13b) and 1 (40b) for time; the
prompt carries as many <image>s. The prompts use a byte-level stand-in tokenizer (the real
Llama-2 tokenizer is tested in test_tokenizer.py; Yi's is not available offline).
"""

import gc
import json
import os
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM
from transformers import SiglipVisionConfig as HFSiglipVisionConfig
from transformers import SiglipVisionModel as HFSiglipVisionModel

from lift_jax.models import critic, intern_vit, llama, siglip
from lift_jax.models.critic import prompts
from tests.models.test_critic import Projector, reference_logits
from tests.models.test_critic_40b import reference_embeds as reference_embeds_40b
from tests.models.test_intern_vit import InternVisionModel
from tests.models.test_llama import byte_tokenizer
from tests.real import hub
from tests.reference import perturb_, rel_err

CAPTION = "A panda eats bamboo."
VOCAB = 8000


# graph_updates=False: the forwards only read the model; graph-mode nnx.jit returns the whole state
# as program outputs, a copy of every weight (3.5 GB more on the 40b case).
@nnx.jit(graph_updates=False)
def _critic_forward(model, px, ids, slots, mask):
  return model(px, ids, slots, mask)


@nnx.jit(graph_updates=False)
def _lm_forward(model, ids):
  return model(ids)


@nnx.jit(static_argnames="layer", graph_updates=False)
def _tower(model, px, layer):
  return model.features(px, layer=layer)


def _save_bf16(module, folder, name="model.safetensors"):
  os.makedirs(folder, exist_ok=True)
  save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in module.state_dict().items()},
            os.path.join(folder, name))


def _read_fp32(module, folder):
  """The torch reference re-read from the saved (bf16) file in fp32."""
  state = {k: v.float() for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
  module.load_state_dict(state, strict=True)
  return module.float().eval()


def write_vila(root, *, write_tower, projector, llm, vision_dim, frames, top):
  """VILA's folder: vision_tower/ (by `write_tower`), llm/ (save_pretrained, bf16, with a
  tokenizer), mm_projector/ (layers.{1,2,4}.*), config.json."""
  write_tower(root / "vision_tower")
  llm.to(torch.bfloat16).save_pretrained(str(root / "llm"))
  byte_tokenizer().save_pretrained(str(root / "llm"))
  _save_bf16(projector, root / "mm_projector")
  (root / "mm_projector" / "config.json").write_text(json.dumps(
      {"model_type": "v2l_projector", "mm_projector_type": "mlp_downsample"}))
  (root / "config.json").write_text(json.dumps(dict({
      "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
      "llm_cfg": {"_name_or_path": "./llm"},
      "vision_tower_cfg": {"_name_or_path": "./vision_tower"},
      "mm_projector_cfg": {"_name_or_path": "./mm_projector",
                           "mm_projector_type": "mlp_downsample"},
      "hidden_size": llm.config.hidden_size, "mm_hidden_size": vision_dim,
      "image_aspect_ratio": "resize", "num_video_frames": frames, "mm_use_im_start_end": False,
      "s2": False}, **top)))
  return str(root)


def _video(frames, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (frames * 3 + 1, 120, 180, 3), dtype=np.uint8)


def _critic_logits(model, tok, video, question):
  c = critic.Critic(model, tok)
  b = c.batch([CAPTION], question)
  px, _ = c._pixels([video])  # (pixels, real frames per video)
  logits = _critic_forward(model, jnp.asarray(px), jnp.asarray(b.token_ids),
                           jnp.asarray(b.image_slots), jnp.asarray(b.attention_mask))
  return np.asarray(logits)[0][b.attention_mask[0]], px


def _critic_errs(root, tmp_path, tok, video, question, want, px, stages):
  """`load_critic` on the VILA folder, then on its converted checkpoint, each freed before the
  next: the critic's errors against `want` (its pixels must be the reference's `px`)."""
  errs = {}
  for how, path in (("critic", root), ("critic converted", None)):
    model = critic.load_critic(path or hub.converted("vila-critic", root,
                                                     str(tmp_path / "converted")))
    got, our_px = _critic_logits(model, tok, video, question)
    np.testing.assert_array_equal(our_px[0], px)
    errs[how] = rel_err(got, want)
    del model
    gc.collect()
    stages.mark("load_critic" if path else "converter + load")
  return errs


@pytest.mark.slow
def test_vila15_13b(tmp_path):
  start = time.perf_counter()
  stages = hub.StagePeaks()
  frames = 2
  torch.manual_seed(0)
  vision_cfg = HFSiglipVisionConfig(**dict(hub.SIGLIP_SO400M_384, num_hidden_layers=2))

  def write_tower(folder):
    hub.perturb_constants_(HFSiglipVisionModel(vision_cfg)).to(torch.bfloat16).save_pretrained(
        str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "SiglipImageProcessor", "size": {"height": 384, "width": 384},
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255,
         "resample": 3}))

  projector = hub.perturb_constants_(Projector(1152, 5120))
  llm = hub.perturb_constants_(HFLlamaForCausalLM(HFLlamaConfig(
      **dict(hub.LLAMA2_13B, num_hidden_layers=1, vocab_size=VOCAB))))
  root = write_vila(tmp_path / "VILA1.5-13b", write_tower=write_tower, projector=projector,
                    llm=llm, vision_dim=1152, frames=frames,
                    top={"mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch"})
  del projector, llm
  gc.collect()
  stages.mark("write")
  tok = byte_tokenizer()
  cfg = critic.vila_config(root)
  assert (cfg.vision.grid, cfg.vision_tokens, cfg.tokens_per_frame) == (27, 729, 196)
  assert cfg.template == "vicuna_v1"

  # The references, from the saved files in fp32.
  question = "fidelity issues"
  video = _video(frames)
  px = cfg.image(critic.sample_frames(video, frames))
  ref = dict(vision=HFSiglipVisionModel.from_pretrained(os.path.join(root, "vision_tower"),
                                                        torch_dtype=torch.float32).eval(),
             projector=_read_fp32(Projector(1152, 5120), os.path.join(root, "mm_projector")),
             llm=HFLlamaForCausalLM.from_pretrained(os.path.join(root, "llm"),
                                                    torch_dtype=torch.float32).eval())
  want = reference_logits(ref, tok, prompts.build_prompt(CAPTION, question, num_frames=frames), px)
  text_ids = torch.tensor([tok(CAPTION + prompts.QUESTIONS[question]).input_ids])
  with torch.no_grad():
    want_tower = ref["vision"](torch.from_numpy(px), output_hidden_states=True)
    want_lm = ref["llm"](text_ids).logits.numpy()
  del ref
  gc.collect()
  stages.mark("reference")

  errs = _critic_errs(root, tmp_path, tok, video, question, want, px, stages)
  tower = siglip.load(root)  # the VILA root: vision_tower/
  errs["siglip last"] = rel_err(tower(jnp.asarray(px)), want_tower.last_hidden_state)
  errs["siglip [-2]"] = rel_err(_tower(tower, jnp.asarray(px), -2), want_tower.hidden_states[-2])
  del tower
  gc.collect()
  lm = llama.load(os.path.join(root, "llm"))
  errs["llama"] = rel_err(_lm_forward(lm, jnp.asarray(text_ids.numpy())), want_lm)
  del lm
  gc.collect()
  stages.mark("siglip.load + llama.load")
  hub.report(f"VILA1.5-13b (SigLIP 2 layers @384 -> 27x27, Llama-2-13B 1 layer, vocab {VOCAB}, "
             f"{frames} frames)", start, stages, **errs)
  assert max(errs.values()) <= 1e-5, errs


@pytest.mark.slow
def test_vila15_40b(tmp_path):
  start = time.perf_counter()
  stages = hub.StagePeaks()
  frames = 1
  torch.manual_seed(0)
  vision_cfg = dict(hub.INTERNVIT_6B_448, num_hidden_layers=1)

  def write_tower(folder):
    _save_bf16(hub.perturb_constants_(InternVisionModel(vision_cfg)), folder)
    (folder / "config.json").write_text(json.dumps(vision_cfg))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "InternVisionPreprocessor"}))

  projector = hub.perturb_constants_(Projector(3200, 7168))
  llm = hub.perturb_constants_(HFLlamaForCausalLM(HFLlamaConfig(
      **dict(hub.YI_34B, num_hidden_layers=1, vocab_size=VOCAB))))
  root = write_vila(tmp_path / "VILA1.5-40b", write_tower=write_tower, projector=projector,
                    llm=llm, vision_dim=3200, frames=frames, top={"mm_vision_select_layer": -1})
  del projector, llm
  gc.collect()
  stages.mark("write")
  tok = byte_tokenizer()
  cfg = critic.vila_config(root)
  assert (cfg.vision_type, cfg.vision.num_patches, cfg.tokens_per_frame) == (
      "intern_vit", 1024, 256)
  assert cfg.template == "hermes-2" and cfg.llm.num_key_value_heads == 8

  question = "motion issues"
  video = _video(frames)
  px = cfg.image(critic.sample_frames(video, frames))
  vision = InternVisionModel(vision_cfg)
  ref = dict(vision=_read_fp32(vision, os.path.join(root, "vision_tower")),
             projector=_read_fp32(Projector(3200, 7168), os.path.join(root, "mm_projector")),
             llm=HFLlamaForCausalLM.from_pretrained(os.path.join(root, "llm"),
                                                    torch_dtype=torch.float32).eval(), tok=tok)
  prompt = prompts.build_prompt(CAPTION, question, "hermes-2", num_frames=frames)
  with torch.no_grad():
    want = ref["llm"](inputs_embeds=reference_embeds_40b(ref, prompt, px)).logits[0].numpy()
    want_tower = ref["vision"](torch.from_numpy(px))[-1].numpy()
  del ref, vision
  gc.collect()
  stages.mark("reference")

  errs = _critic_errs(root, tmp_path, tok, video, question, want, px, stages)
  tower = intern_vit.load(root)
  errs["intern_vit"] = rel_err(_tower(tower, jnp.asarray(px), -1), want_tower)
  del tower
  gc.collect()
  stages.mark("intern_vit.load")
  hub.report(f"VILA1.5-40b (InternViT-6B 1 layer @448, Yi-34B 1 layer, vocab {VOCAB}, "
             f"{frames} frame)", start, stages, **errs)
  assert max(errs.values()) <= 1e-5, errs


def test_siglip_floors_384_over_14(tmp_path):
  """Default-run guard of the floor at so400m's geometry (384 px, patch 14 -> 27x27 = 729
  patches, the last 6 pixel rows and columns unread), on a narrow one-layer tower."""
  cfg = HFSiglipVisionConfig(**dict(hub.SIGLIP_SO400M_384, hidden_size=32, intermediate_size=48,
                                    num_attention_heads=4, num_hidden_layers=1))
  torch.manual_seed(0)
  ref = perturb_(HFSiglipVisionModel(cfg).eval())
  ref.save_pretrained(str(tmp_path / "tower"))
  px = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(px).last_hidden_state.numpy()
  tower = siglip.load(str(tmp_path / "tower"))
  assert (tower.config.grid, tower.config.num_patches) == (27, 729)
  err = rel_err(tower(jnp.asarray(px.numpy())), want)
  assert want.shape == (2, 729, 32) and err <= 1e-5, err

"""The 40B LiFT-Critic's assembly (VILA1.5-40b): InternViT -> `patch` features of the last layer
(CLS dropped) -> 2x2 merge + mlp_downsample projector -> spliced into a Yi-style Llama with
grouped-query attention, prompted with hermes-2. A tiny random VILA folder is built here, loaded
with `load_critic`, and checked end to end against a torch reference assembled from the original
InternViT (tests/models/test_intern_vit.py), VILA's projector and transformers' Llama."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError, write_safetensors
from lift_jax.models import critic, intern_vit
from lift_jax.models.critic import prompts
from tests.models.test_critic import Projector, vila_tokenizer_image_token
from tests.models.test_intern_vit import TINY as VISION
from tests.models.test_intern_vit import make_reference, save_original
from tests.models.test_llama import VOCAB, byte_tokenizer
from tests.reference import perturb_, rel_err

FRAMES = 8
# Yi-34B's shape in miniature: GQA (4 query heads on 2 kv heads), rope theta 5e6, untied head.
LLM = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, rope_theta=5e6,
           max_position_embeddings=1024, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
           pad_token_id=0, tie_word_embeddings=False)
CAPTIONS = ["A panda eats bamboo in the snow.", "Two horses run across a wet beach at dusk."]
TOKENS_PER_FRAME = 4  # 56 px / 14 = 4x4 patches (CLS dropped) -> 2x2 merge -> 4


def write_vila_40b(root, vision, projector, llm, tok):
  """A VILA1.5-40b-shaped folder: the InternViT tower in its original key names, VILA's
  InternVisionPreprocessor config (no mean/std in it), and the 40B release's feature settings."""
  tower = root / "vision_tower"
  save_original(vision, tower)
  (tower / "preprocessor_config.json").write_text(json.dumps(
      {"image_processor_type": "InternVisionPreprocessor"}))
  llm.save_pretrained(str(root / "llm"))
  tok.save_pretrained(str(root / "llm"))
  os.makedirs(root / "mm_projector")
  write_safetensors(str(root / "mm_projector" / "model.safetensors"),
                    {k: v.detach().numpy() for k, v in projector.state_dict().items()})
  (root / "mm_projector" / "config.json").write_text(json.dumps(
      {"model_type": "v2l_projector", "mm_projector_type": "mlp_downsample"}))
  (root / "config.json").write_text(json.dumps({
      "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
      "llm_cfg": {"_name_or_path": "./llm"}, "vision_tower_cfg": {"_name_or_path": "./vision_tower"},
      "mm_projector_cfg": {"_name_or_path": "./mm_projector", "mm_projector_type": "mlp_downsample"},
      "hidden_size": LLM["hidden_size"], "mm_hidden_size": VISION["hidden_size"],
      # The 40B release: layer -1 and no select_feature, so VILA's default "patch" drops the CLS.
      "mm_vision_select_layer": -1, "image_aspect_ratio": "resize", "num_video_frames": FRAMES,
      "mm_use_im_start_end": False, "s2": False}))
  return str(root)


def reference_embeds(ref, prompt, pixel_values):
  """VILA's encode_images (tower hidden_states[-1][:, 1:] -> projector) and
  prepare_inputs_labels_for_multimodal for one prompt: [1, S, D]."""
  ids = vila_tokenizer_image_token(prompt, ref["tok"])
  with torch.no_grad():
    feats = ref["vision"](torch.from_numpy(pixel_values))[-1][:, 1:]
    images = ref["projector"](feats)  # [F, 4, D]
    embed = ref["llm"].get_input_embeddings()
    pieces, chunk, k = [], [], 0
    for i in ids + [None]:
      if i is None or i == -200:
        if chunk:
          pieces.append(embed(torch.tensor(chunk)))
        chunk = []
        if i == -200:
          pieces.append(images[k])
          k += 1
      else:
        chunk.append(i)
    return torch.cat(pieces)[None]


@nnx.jit
def _forward(model, px, ids, slots, mask):
  return model(px, ids, slots, mask)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  vision = make_reference(VISION, seed=3)
  torch.manual_seed(4)
  projector = perturb_(Projector(VISION["hidden_size"], LLM["hidden_size"]).eval(), seed=4)
  llm = perturb_(HFLlamaForCausalLM(HFLlamaConfig(**LLM)).eval(), seed=5)
  tok = byte_tokenizer()
  root = tmp_path_factory.mktemp("vila40b")
  folder = write_vila_40b(root / "VILA1.5-40b-tiny", vision, projector, llm, tok)
  rng = np.random.default_rng(0)
  videos = [rng.integers(0, 256, (n, 40, 60, 3), dtype=np.uint8) for n in (11, 30)]
  return dict(vision=vision, projector=projector, llm=llm, tok=tok, folder=folder, videos=videos,
              critic=critic.Critic.load(folder))


def test_the_folder_reads_as_the_40b_critic(ref):
  cfg = ref["critic"].config
  assert cfg.vision_type == "intern_vit" and isinstance(cfg.vision, intern_vit.InternVisionConfig)
  assert (cfg.select_layer, cfg.select_feature, cfg.template) == (-1, "patch", "hermes-2")
  assert cfg.vision_tokens == 16 and cfg.tokens_per_frame == TOKENS_PER_FRAME
  assert cfg.llm.num_key_value_heads < cfg.llm.num_attention_heads
  assert cfg.image.image_mean == intern_vit.IMAGENET_MEAN and (cfg.image.height, cfg.image.width) == (56, 56)
  assert ref["critic"].stop_strings == ["<|im_end|>"]


def test_whole_assembly_matches_torch_reference(ref):
  c = ref["critic"]
  questions = ["semantic consistency", "motion issues"]
  b = c.batch(CAPTIONS, questions)
  px, counts = c._pixels(ref["videos"])
  assert counts == [FRAMES] * len(ref["videos"])
  logits = np.asarray(_forward(c.model, jnp.asarray(px), jnp.asarray(b.token_ids),
                               jnp.asarray(b.image_slots), jnp.asarray(b.attention_mask)))
  assert np.isfinite(logits).all()
  errs = []
  for row, (caption, q) in enumerate(zip(CAPTIONS, questions)):
    prompt = prompts.build_prompt(caption, q, "hermes-2")
    assert prompt in b.prompts
    with torch.no_grad():
      want = ref["llm"](inputs_embeds=reference_embeds(ref, prompt, px[row])).logits[0].numpy()
    errs.append(rel_err(logits[row][b.attention_mask[row]], want))
  print(f"VILA-40B assembly (InternViT -> projector -> splice -> GQA Llama) logits rel err "
        f"{max(errs):.2e}")
  assert max(errs) <= 1e-5
  first = c.first_token_logits(ref["videos"], CAPTIONS, questions)
  assert rel_err(first, logits[:, -1]) <= 1e-6


def test_generate_returns_the_greedy_answer(ref):
  c = ref["critic"]
  px, _ = c._pixels(ref["videos"][:1])
  prompt = prompts.build_prompt(CAPTIONS[0], "fidelity issues", "hermes-2")
  with torch.no_grad():
    out = ref["llm"].generate(inputs_embeds=reference_embeds(ref, prompt, px[0]), max_new_tokens=6,
                              do_sample=False, eos_token_id=2, pad_token_id=0)
  want = ref["tok"].decode(out[0], skip_special_tokens=True).strip()
  got = c.generate(px, CAPTIONS[:1], "fidelity issues", max_new_tokens=6)
  print(f"40B critic greedy answer: ours {got!r} transformers {want!r}")
  assert isinstance(got[0], str) and got == [want]
  probs = c.ask_all(ref["videos"][1], CAPTIONS[1], mode="logits")
  assert list(probs) == list(prompts.QUESTION_KEYS)
  for p in probs.values():
    assert p.shape == (3,) and 0 < p.sum() <= 1


def test_converted_roundtrip(ref, tmp_path):
  c = ref["critic"]
  dst = critic.save_critic(c.model, str(tmp_path / "conv"))
  back = critic.Critic.load(dst)
  assert back.model.config == c.model.config and back.template.name == "hermes-2"
  a = back.first_token_logits(ref["videos"], CAPTIONS, "motion issues")
  b = c.first_token_logits(ref["videos"], CAPTIONS, "motion issues")
  np.testing.assert_array_equal(a, b)


def test_sharded_forward_equals_unsharded(ref):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  sharded = critic.load_critic(ref["folder"], mesh=mesh)
  c = ref["critic"]
  want = c.first_token_logits(ref["videos"], CAPTIONS * 2, "motion issues", video_index=[0, 1, 0, 1])
  with parallel.use_mesh(mesh):
    got = critic.Critic(sharded, ref["tok"]).first_token_logits(
        ref["videos"], CAPTIONS * 2, "motion issues", video_index=[0, 1, 0, 1])
  err = rel_err(got, want)
  print(f"40B critic sharded (fsdp 4 x tensor 2) vs unsharded rel err {err:.2e}")
  assert err <= 1e-6


def test_folder_errors_are_named(ref, tmp_path):
  """An incomplete InternViT config, and LiFT's `cls_patch` flag on the 40B tower (CLS + 4x4 = 17
  tokens, no square grid: VILA's 2x2 merge would crash too), fail with the file named."""
  root = tmp_path / "VILA1.5-40b-broken"
  os.makedirs(root / "vision_tower")
  for sub in ("llm", "mm_projector"):
    os.symlink(os.path.join(ref["folder"], sub), root / sub)
  with open(os.path.join(ref["folder"], "config.json")) as f:
    top = json.load(f)
  (root / "config.json").write_text(json.dumps(top))
  (root / "vision_tower" / "config.json").write_text(json.dumps(
      {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b"}))
  with pytest.raises(CheckpointError, match=r"vision_tower/config\.json: not an InternViT config"):
    critic.vila_config(str(root))
  (root / "vision_tower" / "config.json").write_text(json.dumps(VISION))
  (root / "config.json").write_text(json.dumps(dict(top, mm_vision_select_feature="cls_patch")))
  with pytest.raises(CheckpointError, match="17 vision tokens"):
    critic.vila_config(str(root))

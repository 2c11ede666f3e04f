"""LiFT-Critic (VILA-1.5) assembly: prompts, projector, frames -> tower -> projector -> splice -> LLM
logits against a torch reference built from transformers' SigLIP and Llama plus VILA's projector,
LoRA merge against PEFT, greedy answers, loading paths and the sharded forward."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM
from transformers import SiglipVisionConfig as HFSiglipVisionConfig
from transformers import SiglipVisionModel as HFSiglipVisionModel

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError, write_safetensors
from lift_jax.models import convert, critic
from lift_jax.models.critic import prompts
from tests.models.test_llama import VOCAB, byte_tokenizer
from tests.reference import perturb_, rel_err

FRAMES = 8
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              image_size=70, patch_size=14)  # 5x5 patches: the 2x2 merge zero-pads to 6x6 -> 9
LLM = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
           rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
CAPTIONS = ["A panda eats bamboo in the snow.", "Two horses run across a wet beach at dusk."]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------- torch reference


class DownSampleBlock(nn.Module):
  """VILA's `base_projector.DownSampleBlock`, verbatim in behaviour."""

  def forward(self, x):
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], h, w, -1)
    n, w, h, c = x.size()
    if w % 2 == 1:
      x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
      n, w, h, c = x.size()
    if h % 2 == 1:
      x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
      n, w, h, c = x.size()
    x = x.view(n, w, int(h / 2), int(c * 2))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
    return x.reshape(x.shape[0], -1, x.shape[-1])


class Projector(nn.Module):
  """VILA's `MultimodalProjector` for `mlp_downsample` (so the keys read `layers.{1,2,4}.*`)."""

  def __init__(self, vision_dim, llm_dim):
    super().__init__()
    self.layers = nn.Sequential(DownSampleBlock(), nn.LayerNorm(4 * vision_dim),
                                nn.Linear(4 * vision_dim, llm_dim), nn.GELU(),
                                nn.Linear(llm_dim, llm_dim))

  def forward(self, x):
    return self.layers(x)


def vila_tokenizer_image_token(prompt, tokenizer, image_token_index=-200):
  """LLaVA/VILA `mm_utils.tokenizer_image_token`, verbatim in behaviour."""
  prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

  def insert_separator(X, sep):
    return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

  input_ids = []
  offset = 0
  if prompt_chunks and prompt_chunks[0] and prompt_chunks[0][0] == tokenizer.bos_token_id:
    offset = 1
    input_ids.append(prompt_chunks[0][0])
  for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
    input_ids.extend(x[offset:])
  return input_ids


def reference_embeds(ref, tok, prompt, pixel_values, llm=None):
  """VILA's encode_images + prepare_inputs_labels_for_multimodal for one prompt: [1, S, D]."""
  llm = llm or ref["llm"]
  ids = vila_tokenizer_image_token(prompt, tok)
  with torch.no_grad():
    feats = ref["vision"](torch.from_numpy(pixel_values), output_hidden_states=True).hidden_states[-2]
    images = ref["projector"](feats)  # [F, 9, D]
    embed = llm.get_input_embeddings()
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


def reference_logits(ref, tok, prompt, pixel_values, llm=None):
  llm = llm or ref["llm"]
  with torch.no_grad():
    return llm(inputs_embeds=reference_embeds(ref, tok, prompt, pixel_values, llm)).logits[0].numpy()


# ----------------------------------------------------------------------------- fixtures


@nnx.jit
def _forward(model, px, ids, slots, mask):
  return model(px, ids, slots, mask)


def write_vila_folder(root, vision, projector, llm, tok, *, top=None):
  os.makedirs(root / "vision_tower")
  vision.save_pretrained(str(root / "vision_tower"))
  (root / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(
      {"image_processor_type": "SiglipImageProcessor", "size": {"height": 70, "width": 70},
       "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255, "resample": 3}))
  llm.save_pretrained(str(root / "llm"))
  tok.save_pretrained(str(root / "llm"))
  os.makedirs(root / "mm_projector")
  write_safetensors(str(root / "mm_projector" / "model.safetensors"),
                    {k: v.detach().numpy() for k, v in projector.state_dict().items()})
  (root / "mm_projector" / "config.json").write_text(json.dumps(
      {"model_type": "v2l_projector", "mm_projector_type": "mlp_downsample"}))
  config = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
            "llm_cfg": {"_name_or_path": "./llm"}, "vision_tower_cfg": {"_name_or_path": "./vision_tower"},
            "mm_projector_cfg": {"_name_or_path": "./mm_projector", "mm_projector_type": "mlp_downsample"},
            "hidden_size": 32, "mm_hidden_size": 32, "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "cls_patch", "image_aspect_ratio": "resize",
            "num_video_frames": FRAMES, "mm_use_im_start_end": False, "s2": False}
  config.update(top or {})
  (root / "config.json").write_text(json.dumps(config))
  return str(root)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  torch.manual_seed(0)
  vision = perturb_(HFSiglipVisionModel(HFSiglipVisionConfig(**VISION)).eval())
  projector = perturb_(Projector(32, 32).eval())
  llm = perturb_(HFLlamaForCausalLM(HFLlamaConfig(**LLM)).eval())
  tok = byte_tokenizer()
  root = tmp_path_factory.mktemp("vila")
  folder = write_vila_folder(root / "VILA1.5-13b-tiny", vision, projector, llm, tok)
  rng = np.random.default_rng(0)
  videos = [rng.integers(0, 256, (n, 40, 60, 3), dtype=np.uint8) for n in (13, 30)]
  return dict(vision=vision, projector=projector, llm=llm, tok=tok, folder=folder, root=root,
              videos=videos, critic=critic.Critic.load(folder))


# ----------------------------------------------------------------------------- prompts


VICUNA_EXPECTED = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: "
    "<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n"
    "A panda eats bamboo in the snow. Please identify the motion issues in this video, focusing on "
    "the continuity and smoothness of actions, as well as their coherence and adherence to the "
    "laws of physics. ASSISTANT:")
HERMES_EXPECTED = (
    "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n"
    "<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n"
    "A panda eats bamboo in the snow. Please identify the semantic consistency issues in this video, "
    "focusing on the alignment between the text and the visual content. Specifically, point out "
    "any discrepancies regarding the subject (e.g., person or animal), quantity, color, scene "
    "description, style, and other relevant aspects.<|im_end|><|im_start|>assistant\n")


def test_prompts_are_byte_for_byte_the_reference():
  assert prompts.build_prompt(CAPTIONS[0], "motion issues", "vicuna_v1") == VICUNA_EXPECTED
  assert prompts.build_prompt(CAPTIONS[0], "semantic consistency", "hermes-2") == HERMES_EXPECTED
  assert list(prompts.QUESTIONS) == ["semantic consistency", "fidelity issues", "motion issues"]
  assert prompts.QUESTIONS["fidelity issues"] == (
      " Please identify the fidelity issues in this video, assessing the realism of the content, "
      "including people, animals, and other objects. Highlight any problems such as missing limbs, "
      "deformed hands or faces, or other unrealistic elements.")
  assert prompts.VICUNA_V1.stop_string == "</s>" and prompts.HERMES_2.stop_string == "<|im_end|>"
  # The training form (one answered turn) ends with the stop string.
  assert prompts.VICUNA_V1.prompt("m", "Good. Fine.").endswith("ASSISTANT: Good. Fine.</s>")
  assert prompts.HERMES_2.prompt("m", "Good.").endswith("<|im_start|>assistant\nGood.<|im_end|>")


def test_tokenize_prompt_is_vilas_tokenizer_image_token():
  tok = byte_tokenizer()
  for template in ("vicuna_v1", "hermes-2"):
    text = prompts.build_prompt(CAPTIONS[1], "fidelity issues", template)
    ids = prompts.tokenize_prompt(tok, text)
    assert ids == vila_tokenizer_image_token(text, tok)
    assert ids.count(-200) == FRAMES and ids[0] == 1 and ids.count(1) == 1
  # hermes-2 answers right after "assistant\n": the labels' first bytes. After vicuna's
  # "ASSISTANT:" comes a space, which this byte tokenizer makes a token of its own.
  assert prompts.label_token_ids(tok, "hermes-2") == {
      k: tok.convert_tokens_to_ids(k[0]) for k in ("Good", "Normal", "Bad")}
  with pytest.raises(ValueError, match="share a first token"):
    prompts.label_token_ids(tok, "vicuna_v1")


def test_frame_sampling_is_linspace():
  np.testing.assert_array_equal(critic.sample_frame_indices(49), [0, 6, 13, 20, 27, 34, 41, 48])
  np.testing.assert_array_equal(critic.sample_frame_indices(5), [0, 0, 1, 1, 2, 2, 3, 4])


# ----------------------------------------------------------------------------- projector


@pytest.mark.parametrize("side", [5, 4])
def test_projector_matches_vila(side, ref):
  x = torch.randn(3, side * side, 32)
  with torch.no_grad():
    want_ds = DownSampleBlock()(x).numpy()
    want = ref["projector"](x).numpy()
  np.testing.assert_array_equal(np.asarray(critic.downsample_2x2(jnp.asarray(x.numpy()))), want_ds)
  model = ref["critic"].model
  got = model.projector(jnp.asarray(x.numpy()))
  assert rel_err(got, want) <= 1e-5


# ----------------------------------------------------------------------------- assembly


def test_whole_assembly_matches_torch_reference(ref):
  c = ref["critic"]
  questions = ["semantic consistency", "motion issues"]
  b = c.batch(CAPTIONS, questions)
  assert b.attention_mask[:, -1].all() and not b.attention_mask[:, 0].all()  # left padded
  px = c._pixels(ref["videos"])
  want_px = np.stack([ref["critic"].config.image(critic.sample_frames(v)) for v in ref["videos"]])
  np.testing.assert_array_equal(px, want_px)

  logits = np.asarray(_forward(c.model, jnp.asarray(px), jnp.asarray(b.token_ids),
                               jnp.asarray(b.image_slots), jnp.asarray(b.attention_mask)))
  errs = []
  for row, (caption, q) in enumerate(zip(CAPTIONS, questions)):
    prompt = prompts.build_prompt(caption, q, "vicuna_v1")
    want = reference_logits(ref, ref["tok"], prompt, px[row])
    got = logits[row][b.attention_mask[row]]
    errs.append(rel_err(got, want))
  print(f"VILA assembly (tower -> projector -> splice -> LLM) logits rel err {max(errs):.2e}")
  assert max(errs) <= 1e-5
  # The one-forward first-token logits are the last row of the same thing.
  first = c.first_token_logits(ref["videos"], CAPTIONS, questions)
  assert rel_err(first, logits[:, -1]) <= 1e-6


def test_greedy_answers_match_torch_generate(ref):
  c = ref["critic"]
  px = c._pixels(ref["videos"][:1])
  prompt = prompts.build_prompt(CAPTIONS[0], "fidelity issues", "vicuna_v1")
  with torch.no_grad():
    embeds = reference_embeds(ref, ref["tok"], prompt, px[0])
    out = ref["llm"].generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False,
                              eos_token_id=2, pad_token_id=0)
  want = ref["tok"].decode(out[0], skip_special_tokens=True).strip()
  got = c.generate(px, CAPTIONS[:1], "fidelity issues", max_new_tokens=6)
  print(f"critic greedy answer: ours {got!r} transformers {want!r}")
  assert got == [want]
  answers = c.ask_all(ref["videos"][1], CAPTIONS[1], max_new_tokens=4)
  assert list(answers) == list(prompts.QUESTION_KEYS) and all(isinstance(a, str) for a in answers.values())
  hermes = critic.Critic(c.model, ref["tok"], template="hermes-2")  # distinct label tokens
  probs = hermes.ask_all(ref["videos"][1], CAPTIONS[1], mode="logits")
  for p in probs.values():
    assert p.shape == (3,) and 0 < p.sum() <= 1


# ----------------------------------------------------------------------------- LoRA


def _adapter(ref, tmp_path):
  """A PEFT adapter (r=4, alpha=8) on every linear of the LLM, with non-zero B, in two layouts."""
  from peft import LoraConfig, get_peft_model
  torch.manual_seed(1)
  peft_model = get_peft_model(copy.deepcopy(ref["llm"]),
                              LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_" in name:
        p.normal_(0, 0.1)
  peft_model.eval()
  plain = str(tmp_path / "adapter_plain")
  peft_model.save_pretrained(plain)
  # VILA's layout: the LLM sits under `llm.` of the multimodal model.
  vila = tmp_path / "LiFT-Critic-13b-lora"
  os.makedirs(vila)
  from lift_jax.checkpoint.safetensors import SafetensorsFile
  f = SafetensorsFile(os.path.join(plain, "adapter_model.safetensors"))
  keys = f.keys()
  assert all(k.startswith("base_model.model.model.layers.") for k in keys)
  write_safetensors(str(vila / "adapter_model.safetensors"),
                    {k.replace("base_model.model.", "base_model.model.llm.", 1): f.read(k) for k in keys})
  with open(os.path.join(plain, "adapter_config.json")) as fh:
    (vila / "adapter_config.json").write_text(fh.read())
  return peft_model, plain, str(vila)


def test_lora_merge_matches_peft(ref, tmp_path):
  peft_model, plain, vila_adapter = _adapter(ref, tmp_path)
  px = ref["critic"]._pixels(ref["videos"][:1])
  prompt = prompts.build_prompt(CAPTIONS[0], "semantic consistency", "vicuna_v1")
  want = reference_logits(ref, ref["tok"], prompt, px[0], llm=peft_model)
  base = reference_logits(ref, ref["tok"], prompt, px[0])
  assert rel_err(base, want) > 1e-2  # the adapter matters
  errs = []
  for adapter in (vila_adapter, plain):
    c = critic.Critic(critic.load_critic(ref["folder"], lora=adapter), ref["tok"])
    b = c.batch(CAPTIONS[:1], "semantic consistency")
    logits = np.asarray(_forward(c.model, jnp.asarray(px), jnp.asarray(b.token_ids),
                                 jnp.asarray(b.image_slots), jnp.asarray(b.attention_mask)))
    errs.append(rel_err(logits[0][b.attention_mask[0]], want))
  print(f"LoRA-merged critic vs PEFT (unmerged) logits rel err {max(errs):.2e}")
  assert max(errs) <= 1e-5


def test_lora_errors_are_named(ref, tmp_path):
  bad = tmp_path / "bad_adapter"
  os.makedirs(bad)
  (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
  write_safetensors(str(bad / "adapter_model.safetensors"), {
      "base_model.model.llm.model.layers.0.mlp.nope_proj.lora_A.weight": np.zeros((2, 32), np.float32),
      "base_model.model.llm.model.layers.0.mlp.nope_proj.lora_B.weight": np.zeros((48, 2), np.float32)})
  with pytest.raises(CheckpointError, match="nope_proj"):
    critic.load_critic(ref["folder"], lora=str(bad))
  (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
  with pytest.raises(CheckpointError, match="use_dora"):
    critic.load_critic(ref["folder"], lora=str(bad))


# ----------------------------------------------------------------------------- loading, sharding


def test_converted_roundtrip_keeps_tokenizer(ref, tmp_path):
  c = ref["critic"]
  dst = critic.save_critic(c.model, str(tmp_path / "conv"))
  assert os.path.isdir(os.path.join(dst, "tokenizer"))
  back = critic.Critic.load(dst)
  assert back.model.config == c.model.config and back.template.name == "vicuna_v1"
  a = back.first_token_logits(ref["videos"], CAPTIONS, "motion issues")
  b = c.first_token_logits(ref["videos"], CAPTIONS, "motion issues")
  np.testing.assert_array_equal(a, b)


def test_convert_kind_streams_the_critic_with_its_tokenizer(ref, tmp_path):
  """`convert_checkpoint --kind vila-critic` (the spec's streaming convert) equals load + save."""
  dst = str(tmp_path / "streamed")
  summary = convert.convert("vila-critic", ref["folder"], dst, progress=False)
  assert summary["parameters"] == sum(
      x.size for x in jax.tree.leaves(nnx.state(ref["critic"].model, nnx.Param)))
  assert os.path.isdir(os.path.join(dst, "tokenizer"))
  back = critic.Critic.load(dst)
  a = back.first_token_logits(ref["videos"], CAPTIONS, "motion issues")
  b = ref["critic"].first_token_logits(ref["videos"], CAPTIONS, "motion issues")
  np.testing.assert_array_equal(a, b)


def test_sharded_critic_forward_equals_unsharded(ref):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  sharded = critic.load_critic(ref["folder"], mesh=mesh)
  assert tuple(sharded.llm.layers.layers.attn.q.kernel[...].sharding.spec) == (None, "fsdp",
                                                                                "tensor", None)
  c = ref["critic"]
  questions = ["semantic consistency", "fidelity issues", "motion issues", "motion issues"]
  captions = CAPTIONS * 2
  want = c.first_token_logits(ref["videos"], captions, questions, video_index=[0, 1, 0, 1])
  with parallel.use_mesh(mesh):
    got = critic.Critic(sharded, ref["tok"]).first_token_logits(
        ref["videos"], captions, questions, video_index=[0, 1, 0, 1])
  err = rel_err(got, want)
  print(f"critic sharded (fsdp 4 x tensor 2) vs unsharded rel err {err:.2e}")
  assert err <= 1e-6


def test_folder_errors_are_named(ref, tmp_path):
  root = tmp_path / "intern"
  os.makedirs(root)
  for sub in ("llm", "mm_projector"):
    os.symlink(os.path.join(ref["folder"], sub), root / sub)
  os.makedirs(root / "vision_tower")
  (root / "vision_tower" / "config.json").write_text(json.dumps(
      {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b"}))
  with open(os.path.join(ref["folder"], "config.json")) as f:
    (root / "config.json").write_text(f.read())
  with pytest.raises(CheckpointError, match="not an InternViT config"):
    critic.load_critic(str(root))
  with pytest.raises(CheckpointError, match="not a VILA folder"):
    critic.load_critic(os.path.join(ref["folder"], "llm"))

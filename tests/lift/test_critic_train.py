"""Critic SFT: the loss mask and the vicuna_v1 string, LoRA training on a tiny random VILA and a
tiny synthetic HRA set (the released layout), PEFT export parity, merge, sharded and accumulated
step == single device. tools/train_critic.py (with resume) is tested in tests/tools."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM
from transformers import SiglipVisionConfig as HFSiglipVisionConfig
from transformers import SiglipVisionModel as HFSiglipVisionModel

from lift_jax import parallel
from lift_jax.data import critic_sft, hra
from lift_jax.lift import critic_eval
from lift_jax.lift import critic_train as ct
from lift_jax.lift import lora_adapters as la
from lift_jax.models import critic
from lift_jax.models.critic import prompts
from tests.data.test_hra import CAPTIONS, make_release
from tests.models.test_critic import Projector, write_vila_folder
from tests.models.test_llama import SPECIALS
from tests.reference import rel_err

VOCAB = 512
IMAGE = 28  # 2x2 patches of 14 -> one token per frame after the 2x2 merge
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=IMAGE, patch_size=14)
LLM = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
           rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
LORA = la.LoraConfig(r=32, alpha=64.0, dropout=0.05)
WORDS = ("Good", "Normal", "Bad")


def label_tokenizer():
  """A small byte-level BPE tokenizer trained on the prompts (Llama-like: <s> prepended, </s> and
  ChatML specials), so samples are ~150 tokens and " Good", " Normal", " Bad" are one token each,
  as SentencePiece's "▁Good": after vicuna's "ASSISTANT:" the label is the first answer token."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  answers = [f" {w}. Reason 1-2: the {d} looks {w.lower()}. There are no obvious problems."
             for w in WORDS for d in prompts.QUESTIONS]
  corpus = ([prompts.VICUNA_V1.system, prompts.HERMES_2.system, "USER: ASSISTANT:"]
            + list(prompts.QUESTIONS.values()) + list(CAPTIONS) + answers) * 3
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                     special_tokens=[("<s>", 1)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<unk>",
                                 additional_special_tokens=["<|im_end|>", "<|im_start|>"])


def tiny_vila(root) -> dict:
  """A random VILA folder (SigLIP + mlp_downsample + Llama) named like VILA1.5-13b (vicuna_v1)."""
  torch.manual_seed(0)
  vision = HFSiglipVisionModel(HFSiglipVisionConfig(**VISION)).eval()
  projector = Projector(32, 32).eval()
  llm = HFLlamaForCausalLM(HFLlamaConfig(**LLM)).eval()
  with torch.no_grad():  # a trained-like head: LoRA does not adapt lm_head, and HF's 0.02 init
    llm.lm_head.weight.normal_(0.0, 0.3)  # caps a 32-wide model's logits well below one nat
  tok = label_tokenizer()
  folder = write_vila_folder(root / "VILA1.5-13b-tiny", vision, projector, llm, tok)
  (root / "VILA1.5-13b-tiny" / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(
      {"image_processor_type": "SiglipImageProcessor", "size": {"height": IMAGE, "width": IMAGE},
       "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255, "resample": 3}))
  return dict(folder=folder, tok=tok, llm=llm)


def tiny_hra(root) -> str:
  """The synthetic release (tests/data/test_hra.py) built at the tiny critic's frame size."""
  make_release(root / "release", n_videos=6, vidgen=2)
  out = str(root / "hra")
  hra.build_hra(out, manual_dir=str(root / "release"), test_size=6, seed=0, image_size=IMAGE,
                progress=False)
  return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("critic_sft")
  v = tiny_vila(root)
  data = tiny_hra(root)
  splits = hra.open_hra(data)
  model = critic.load_critic(v["folder"])
  cfg = model.config
  texts = [r for rows in hra.hra_texts(data).values() for r in rows]
  length, targets = critic_sft.sequence_sizes(v["tok"], cfg.template, texts, num_frames=8,
                                      tokens_per_frame=cfg.tokens_per_frame, multiple=32)
  transform = critic_sft.SftTransform(v["tok"], cfg.template, num_frames=8,
                              tokens_per_frame=cfg.tokens_per_frame, max_length=length,
                              max_targets=targets, image_size=(IMAGE, IMAGE))
  train = [transform(splits["train"][i]) for i in range(len(splits["train"]))]
  return dict(root=root, data=data, splits=splits, transform=transform, train=train, **v)


def fresh(setup, lora=LORA, seed=0):
  model = critic.load_critic(setup["folder"])
  return la.add_lora(model, lora, seed=seed)


def batch_of(setup, rows):
  return critic_sft.collate([setup["train"][i] for i in rows])


# ----------------------------------------------------------------------------- samples


def test_sample_is_the_vicuna_v1_string_and_only_the_answer_counts(setup):
  tok = setup["tok"]
  ex = setup["splits"]["train"][0]
  user, answer = hra.text(ex["user_text"]), hra.text(ex["answer"])
  caption, dim = hra.text(ex["caption"]), hra.text(ex["dimension"])
  s = critic_sft.encode_sft(tok, "vicuna_v1", user, answer)
  # The string VILA's preprocess_v1 builds for a video sample: <video>\n -> 8 x "<image>\n", the
  # caption's leading space kept, " ASSISTANT: " + answer + "</s>".
  want = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions. USER: "
          + "<image>\n" * 8 + " " + caption + prompts.QUESTIONS[dim] + " ASSISTANT: " + answer
          + "</s>")
  assert s.text == want == prompts.VICUNA_V1.prompt(critic_sft.training_message(user), answer)
  assert list(s.ids) == prompts.tokenize_prompt(tok, want)
  # Targets: exactly the answer's tokens and the stop token, nothing of the prompt.
  targets = [i for i, lab in zip(s.ids, s.labels) if lab != critic_sft.IGNORE_INDEX]
  assert tok.decode(targets) == " " + answer + "</s>"
  assert targets[0] == prompts.label_token_ids(tok, "vicuna_v1")[hra.text(ex["label"])]
  assert targets[-1] == tok.eos_token_id and s.labels[-1] == tok.eos_token_id
  first = s.labels.index(targets[0])
  prompt_ids = prompts.tokenize_prompt(tok, prompts.VICUNA_V1.prompt(critic_sft.training_message(user)))
  assert list(s.ids[:first]) == prompt_ids and all(x == critic_sft.IGNORE_INDEX for x in s.labels[:first])
  # hermes-2 (40B): the answer and <|im_end|> count.
  h = critic_sft.encode_sft(tok, "hermes-2", user, answer)
  ht = [i for i, lab in zip(h.ids, h.labels) if lab != critic_sft.IGNORE_INDEX]
  assert tok.decode(ht) == answer + "<|im_end|>"
  # The padded arrays: image slots expanded, each target predicted from the position before it.
  arr = setup["transform"](ex)
  n = int(arr["attention_mask"].sum())
  ids, slots, labels = critic_sft.expand_images(s, tokens_per_frame=1)
  assert n == len(ids) and (arr["image_slots"][:n] >= 0).sum() == 8
  np.testing.assert_array_equal(arr["image_slots"][arr["image_slots"] >= 0], np.arange(8))
  k = int((arr["target_ids"] >= 0).sum())
  np.testing.assert_array_equal(arr["target_ids"][:k], targets)
  np.testing.assert_array_equal(arr["token_ids"][arr["target_pos"][:k] + 1], targets)


def test_answer_logits_are_the_full_forward_at_the_answer(setup):
  model = fresh(setup)
  b = batch_of(setup, [0, 1])
  got = np.asarray(nnx.jit(ct.answer_logits)(model, {k: jnp.asarray(v) for k, v in b.items()}))
  px = np.stack([model.config.image(f) for f in b["frames"]])
  slots = np.where(b["image_slots"] >= 0, b["image_slots"] + np.arange(2)[:, None] * 8, -1)
  args = [jnp.asarray(x) for x in (px, b["token_ids"], slots, b["attention_mask"])]
  full = np.asarray(nnx.jit(lambda m, *a: m(*a))(model, *args))
  want = np.take_along_axis(full, b["target_pos"][..., None], axis=1)
  assert rel_err(got, want) <= 1e-5


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(setup):
  """150 steps of batch 8 on one device: the loss falls and the training labels are learned."""
  model = fresh(setup)
  n = len(setup["train"])
  tr = ct.CriticTrainer(model, mesh=parallel.make_mesh({"data": 1}, jax.devices()[:1]),
                        optim=ct.SftOptimConfig(lr=3e-3, warmup_ratio=0.03, total_steps=150))
  state = tr.init_state()
  rows = setup["train"]
  everything = critic_sft.collate(rows[:8]), critic_sft.collate(rows[8:] + rows[:16 - n])
  before = [tr.loss(state, b) for b in everything]
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(150):
    state, m = tr.step(state, batch_of(setup, rng.permutation(n)[:8]))
    losses.append(float(m["loss"]))
  after = [tr.loss(state, b) for b in everything]
  return dict(tr=tr, state=state, before=before, after=after, losses=losses)


def test_lora_training_lowers_the_loss_and_learns_the_labels(setup, trained):
  before, after = trained["before"], trained["after"]
  b_loss, a_loss = np.mean([x["loss"] for x in before]), np.mean([x["loss"] for x in after])
  acc = np.mean([x["label_accuracy"] for x in after])
  print(f"critic SFT on {len(setup['train'])} ratings: loss {b_loss:.3f} -> {a_loss:.3f}, "
        f"label acc {np.mean([x['label_accuracy'] for x in before]):.2f} -> {acc:.2f}, "
        f"token acc {np.mean([x['token_accuracy'] for x in after]):.2f}")
  assert a_loss < 0.25 * b_loss
  assert acc >= 0.9
  # The same, scored the way evaluation scores: Critic.label_probs argmax on the training set.
  c = critic.Critic(trained["tr"].model(trained["state"]), setup["tok"])
  res = critic_eval.evaluate(c, setup["splits"]["train"], mode="logits", batch_size=8, prompt_style="train")
  print(f"train-split label accuracy (logits mode): {res.to_json()['accuracy']}")
  assert res.overall >= 0.9
  # Only the LoRA factors moved: the frozen weights are the loaded ones.
  base = critic.load_critic(setup["folder"])
  m = trained["tr"].model(trained["state"])
  np.testing.assert_array_equal(np.asarray(m.llm.layers.layers.attn.q.base.kernel[...]),
                                np.asarray(base.llm.layers.layers.attn.q.kernel[...]))
  for part in ("vision", "projector"):
    for x, y in zip(jax.tree.leaves(nnx.state(getattr(m, part))),
                    jax.tree.leaves(nnx.state(getattr(base, part)))):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_exported_adapter_matches_peft_and_merges(setup, trained, tmp_path):
  from peft import PeftModel

  m = trained["tr"].model(trained["state"])
  plain = la.export_peft(m, str(tmp_path / "adapter_llm"), layout="llm")
  vila_layout = la.export_peft(m, str(tmp_path / "adapter_vila"))
  with open(os.path.join(vila_layout, "adapter_config.json")) as f:
    conf = json.load(f)
  assert conf["r"] == 32 and conf["lora_alpha"] == 64 and conf["lora_dropout"] == 0.05
  assert "llm.model.layers.1.mlp.down_proj" in conf["target_modules"]
  # PyTorch: the PEFT adapter on the matching torch LLM gives our LoRA model's logits.
  peft_llm = PeftModel.from_pretrained(copy.deepcopy(setup["llm"]), plain).eval()
  ids = np.asarray([[1] + list(range(10, 40)) + [2]])
  with torch.no_grad():
    want = peft_llm(torch.from_numpy(ids)).logits.numpy()
    base = setup["llm"](torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(nnx.jit(lambda mod, x: mod.llm(x))(m, jnp.asarray(ids)))
  err = rel_err(got, want)
  print(f"exported adapter: PEFT torch vs our LoRA logits rel err {err:.2e} "
        f"(adapter moves them by {rel_err(base, want):.2e})")
  assert err <= 1e-5 and rel_err(base, want) > 1e-3
  # VILA layout: the critic loader merges it into the same full critic.
  b = batch_of(setup, [0, 1])
  px = np.stack([m.config.image(f) for f in b["frames"]])
  slots = np.where(b["image_slots"] >= 0, b["image_slots"] + np.arange(2)[:, None] * 8, -1)
  args = [jnp.asarray(x) for x in (px, b["token_ids"], slots, b["attention_mask"])]
  fwd = nnx.jit(lambda mod, *a: mod(*a))
  ours = np.asarray(fwd(m, *args))
  loaded = np.asarray(fwd(critic.load_critic(setup["folder"], lora=vila_layout), *args))
  real = b["attention_mask"]
  assert rel_err(loaded[real], ours[real]) <= 1e-5
  # Merge in place -> a plain critic -> save_critic -> the same logits again.
  merged = la.merge_lora(trained["tr"].model(trained["state"]))
  assert not la.lora_modules(merged)
  saved = critic.save_critic(merged, str(tmp_path / "merged"))
  back = np.asarray(fwd(critic.load_critic(saved), *args))
  assert rel_err(back[real], ours[real]) <= 1e-5


def test_sharded_accumulated_step_equals_single_device(setup):
  """Two steps of batch 8: on one device in one piece == on a data 2 x fsdp 2 x tensor 2 mesh in
  two accumulated micro-batches (dropout off: each micro-batch draws its own masks)."""
  batches = [batch_of(setup, range(0, 8)), batch_of(setup, range(4, 12))]
  lora = la.LoraConfig(r=8, alpha=16.0, dropout=0.0)

  def run(axes, devices=None, accum=1):
    tr = ct.CriticTrainer(fresh(setup, lora), mesh=parallel.make_mesh(axes, devices),
                          optim=ct.SftOptimConfig(lr=1e-3, total_steps=10), accum_steps=accum)
    state = tr.init_state()
    for b in batches:
      state, metrics = tr.step(state, b)
    return jax.device_get(state["params"]), float(metrics["loss"])

  single, loss = run({"data": 1}, jax.devices()[:1])
  axes = {"data": 2, "fsdp": 2, "tensor": 2}
  params, l2 = run(axes, accum=2)
  diff = max(float(np.max(np.abs(a - b)))
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)))
  print(f"critic SFT step {axes} x 2 micro-batches vs one device: max |Δ LoRA| {diff:.2e}, "
        f"loss {l2:.6f} vs {loss:.6f}")
  assert diff <= 1e-5 and abs(l2 - loss) <= 1e-5 * abs(loss)

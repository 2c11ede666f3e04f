"""The critic's prompts on the real tokenizer: VILA1.5-13b's Llama-2 SentencePiece model.

VILA loads `llm/tokenizer.model` as `LlamaTokenizer(use_fast=False, legacy=False)` and builds
prompts with `tokenizer_image_token` and SFT labels with `preprocess_v1`. transformers 5 no longer
has that slow class (its `LlamaTokenizer` is the tokenizers-backed one, which splits whitespace
runs and the spaces around `</s>` differently), so the reference below restates the slow class's
algorithm directly on the `sentencepiece` library, and VILA's two functions on top of it.
"""

import json
import os
import re
import shutil

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from lift_jax.data import hra
from lift_jax.data import critic_sft as ct
from lift_jax.models import critic
from lift_jax.models.critic import prompts
from tests.models.test_critic import vila_tokenizer_image_token

SPIECE_UNDERLINE = "▁"
SPECIALS = ("<unk>", "<s>", "</s>")
# What VILA1.5-13b's llm/ ships beside tokenizer.model (Vicuna-1.5's settings, pad = <unk>).
TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                    "add_eos_token": False, "legacy": False, "bos_token": "<s>",
                    "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                    "clean_up_tokenization_spaces": False, "model_max_length": 4096,
                    "padding_side": "right", "sp_model_kwargs": {}}
CAPTIONS = {
    "plain": "A panda eats bamboo in the snow.",
    "digits and punctuation": "3 cats (2 black, 1 white) jump 1.5m high; at 10:45 pm -- 100% real!",
    "non-ASCII": "Un café à Paris, 東京の夜景, a Ñandú and an emoji 🐼 — “quoted”.",
    "leading and trailing spaces": "  Two horses run across a wet beach at dusk.  ",
    "inner whitespace": "A dog\tsits.\n\nIt  barks   twice.",
}


class SlowLlamaReference:
  """transformers 4.x `LlamaTokenizer(legacy=False)` on the sentencepiece library: "▁" prepended
  once, the text split at special tokens, each piece encoded by a SentencePiece model without its
  dummy prefix (a piece starting with a space is encoded after "<unk>", then those ids dropped),
  a leading lone "▁" before a special token removed, BOS in front."""

  def __init__(self, model_file: str):
    sp = spm.SentencePieceProcessor(model_file=model_file)
    proto = sentencepiece_model_pb2.ModelProto.FromString(sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    self.bos_token_id = self.sp.piece_to_id("<s>")
    self.unk_length = len(self.sp.encode("<unk>", out_type=str))

  def _encode_piece(self, text):
    if not text.startswith((SPIECE_UNDERLINE, " ")):
      return self.sp.encode(text, out_type=str)
    return self.sp.encode("<unk>" + text, out_type=str)[self.unk_length:]

  def tokenize(self, text):
    if not text:
      return []
    text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
    tokens = []
    for part in re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", text):
      tokens += [part] if part in SPECIALS else (self._encode_piece(part) if part else [])
    if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in SPECIALS:
      tokens = tokens[1:]
    return tokens

  def __call__(self, text):
    class Encoding:
      input_ids = [self.bos_token_id] + [self.sp.piece_to_id(t) for t in self.tokenize(text)]
    return Encoding()


def vila_preprocess_v1(conversation: str, tokenizer) -> tuple[list[int], list[int]]:
  """VILA's `preprocess_v1` (one round, has_image): ids, and labels with everything up to the
  assistant's answer set to -100 (`instruction_len = len(ids(parts[0])) - 2`)."""
  ids = vila_tokenizer_image_token(conversation, tokenizer)
  labels = list(ids)
  sep, sep2 = " ASSISTANT: ", "</s>"
  cur = 1
  labels[:cur] = [-100] * cur
  for rou in conversation.split(sep2):
    if rou == "":
      break
    parts = rou.split(sep)
    assert len(parts) == 2, rou
    parts[0] += sep
    round_len = len(vila_tokenizer_image_token(rou, tokenizer))
    instruction_len = len(vila_tokenizer_image_token(parts[0], tokenizer)) - 2
    labels[cur:cur + instruction_len] = [-100] * instruction_len
    cur += round_len
  labels[cur:] = [-100] * (len(labels) - cur)
  assert cur == len(ids), "tokenization mismatch: VILA would drop this sample"
  return ids, labels


@pytest.fixture(scope="module")
def tokenizers(real_assets, tmp_path_factory):
  model_file = os.path.join(real_assets, "llama2-tokenizer", "tokenizer.model")
  root = tmp_path_factory.mktemp("VILA1.5-13b")
  os.makedirs(root / "llm")
  shutil.copy(model_file, root / "llm" / "tokenizer.model")
  (root / "llm" / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
  (root / "llm" / "special_tokens_map.json").write_text(json.dumps(
      {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}))
  return critic.load_tokenizer(str(root)), SlowLlamaReference(model_file), real_assets


def test_reference_is_the_sentencepiece_model(tokenizers):
  """On text without special tokens the slow tokenizer is plain SentencePiece (dummy prefix on)."""
  _, ref, real = tokenizers
  plain = spm.SentencePieceProcessor(model_file=os.path.join(real, "llama2-tokenizer",
                                                             "tokenizer.model"))
  assert plain.get_piece_size() == 32000
  for caption in CAPTIONS.values():
    assert ref(caption).input_ids == [1] + plain.encode(caption)


@pytest.mark.parametrize("kind", list(CAPTIONS))
def test_prompts_are_vilas_tokenizer_image_token(tokenizers, kind):
  ours, ref, _ = tokenizers
  for question in prompts.QUESTION_KEYS:
    text = prompts.build_prompt(CAPTIONS[kind], question, "vicuna_v1")
    want = vila_tokenizer_image_token(text, ref)
    assert prompts.tokenize_prompt(ours, text) == want, (kind, question)
    assert want[0] == ours.bos_token_id == 1 and want.count(1) == 1
    assert want.count(prompts.IMAGE_TOKEN_INDEX) == prompts.NUM_FRAMES


def test_label_first_tokens(tokenizers, real_assets):
  """The first answer token VILA trains (first unmasked label of "ASSISTANT: <Label>. ...") is the
  SentencePiece piece "▁<Label>"; `label_token_ids` finds the same ids."""
  ours, ref, _ = tokenizers
  message = prompts.user_message(CAPTIONS["plain"], "motion issues")
  want = {}
  for label in ("Good", "Normal", "Bad"):
    _, labels = vila_preprocess_v1(prompts.VICUNA_V1.prompt(message, f"{label}. Fine."), ref)
    want[label] = next(x for x in labels if x != -100)
    assert want[label] == ref.sp.piece_to_id(SPIECE_UNDERLINE + label)
  assert prompts.label_token_ids(ours, "vicuna_v1") == want
  assert len(set(want.values())) == 3


def test_sft_answer_mask_on_real_conversations(tokenizers, real_assets):
  """Real VIDGEN ratings (LLaVA layout) and LiFT critic answers: ids and labels as preprocess_v1."""
  ours, ref, _ = tokenizers
  with open(os.path.join(real_assets, "lift", "vidgen-data.json")) as f:
    entries = json.load(f)
  with open(os.path.join(real_assets, "lift", "critic_output_13b.json")) as f:
    outputs = json.load(f)
  answers = [a for row in outputs for key, a in row.items()
             if key in prompts.QUESTIONS and isinstance(a, str)][:4]
  assert answers, "critic_output_13b.json holds no answers"
  samples = []
  for i in (0, 1, 500, len(entries) - 1):
    e = hra.parse_entry(entries[i], source="vidgen", index=i)
    samples.append((e.user_text, e.answer))
  samples += [(samples[0][0], a) for a in answers]  # reasons with digits, commas, long text
  for user, answer in samples:
    got = ct.encode_sft(ours, "vicuna_v1", user, answer)
    ids, labels = vila_preprocess_v1(got.text, ref)
    assert list(got.ids) == ids
    assert list(got.labels) == labels
    assert labels[-1] == 2 and sum(x != -100 for x in labels) == got.num_targets > 2

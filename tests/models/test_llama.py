"""Llama (MHA and GQA) parity with transformers' LlamaForCausalLM: logits on padded batches, the KV
cache, greedy generation against `generate`, sampling filters, stop sequences, loading, sharding."""

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
from lift_jax.models import llama
from tests.reference import perturb_, rel_err

VOCAB = 264
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, attention_dropout=0.0)
CONFIGS = {
    # Llama-2 / Vicuna: multi-head attention, untied head.
    "mha": dict(BASE, num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0),
    # Yi: grouped-query attention (2 query heads per kv head), large rope theta.
    "gqa": dict(BASE, num_attention_heads=4, num_key_value_heads=2, rope_theta=5e6),
    # Tied input/output embeddings (a stored lm_head.weight, if any, is skipped).
    "tied": dict(BASE, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                 tie_word_embeddings=True),
}
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_end|>", "<|im_start|>"]


def byte_tokenizer():
  """A Llama-like byte-level BPE tokenizer (no merges) of VOCAB ids: exact round trip of any text.

  <unk>=0, <s>=1 (prepended), </s>=2, <|im_end|>=3, <|im_start|>=4, then the 256 byte symbols.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  alphabet = pre_tokenizers.ByteLevel.alphabet()
  vocab = {t: i for i, t in enumerate(SPECIALS)}
  for ch in sorted(alphabet):
    vocab[ch] = len(vocab)
  for j in range(VOCAB - len(vocab)):
    vocab[f"<extra_{j}>"] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                     special_tokens=[("<s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<unk>",
                                 additional_special_tokens=["<|im_end|>", "<|im_start|>"])
  return fast


@nnx.jit
def _logits(model, ids, mask, pos):
  return model(ids, mask, pos)


def make_reference(kind: str, folder: str):
  torch.manual_seed(sorted(CONFIGS).index(kind))
  model = perturb_(HFLlamaForCausalLM(HFLlamaConfig(**CONFIGS[kind])).eval(), scale=0.1)
  model.save_pretrained(folder)
  return model


_BUILT = {}


def built(kind, tmp_path_factory):
  """One perturbed tiny model per kind for the whole module, its folder and our loaded port."""
  if kind not in _BUILT:
    folder = str(tmp_path_factory.mktemp(f"llama_{kind}") / "hf")
    model = make_reference(kind, folder)
    _BUILT[kind] = dict(kind=kind, model=model, folder=folder, lm=llama.load(folder))
  return _BUILT[kind]


@pytest.fixture(scope="module", params=["gqa", "mha"])
def reference(request, tmp_path_factory):
  """Both attention layouts: for the parity tests."""
  return built(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def mha(tmp_path_factory):
  """One model: for the tests of the decoding machinery, which does not depend on the layout."""
  return built("mha", tmp_path_factory)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
  return built("gqa", tmp_path_factory)


def padded_batch(seed=0, t=11, left=True):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, (2, t)).astype(np.int64)
  mask = np.ones((2, t), np.int64)
  if left:
    ids[1, :4], mask[1, :4] = 0, 0
  else:
    ids[1, -4:], mask[1, -4:] = 0, 0
  return ids, mask


def test_config_reads_both_rope_spellings():
  old = dict(CONFIGS["gqa"], model_type="llama", rope_theta=5e6, rope_scaling=None)
  new = HFLlamaConfig(**CONFIGS["gqa"]).to_dict()
  a, b = llama.LlamaConfig.from_hf_config(old), llama.LlamaConfig.from_hf_config(new)
  assert a.rope_theta == b.rope_theta == 5e6 and a.num_key_value_heads == 2 and a.head_dim == 8
  assert llama.LlamaConfig.from_hf_config(a.to_hf_config()) == a
  with pytest.raises(ValueError, match="rope type 'linear'"):
    llama.LlamaConfig.from_hf_config(dict(old, rope_scaling={"type": "linear", "factor": 2.0}))


@pytest.mark.parametrize("left", [True, False])
def test_logits_match_transformers_on_padded_batch(reference, left):
  ids, mask = padded_batch(left=left)
  # Left padding with the positions transformers' generate uses; right padding with the default.
  pos = np.clip(mask.cumsum(-1) - 1, 0, None) if left else None
  with torch.no_grad():
    want = reference["model"](input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              position_ids=None if pos is None else torch.from_numpy(pos)).logits
  got = _logits(reference["lm"], jnp.asarray(ids), jnp.asarray(mask),
                None if pos is None else jnp.asarray(pos))
  real = mask.astype(bool)  # padded queries are not compared
  err = rel_err(np.asarray(got)[real], want.numpy()[real])
  print(f"Llama {reference['kind']} logits ({'left' if left else 'right'} padded) rel err {err:.2e}")
  assert err <= 1e-5


def test_tied_embeddings_logits_match(tmp_path_factory):
  tied = built("tied", tmp_path_factory)
  assert tied["lm"].lm_head is None
  ids, mask = padded_batch(seed=7)
  with torch.no_grad():
    want = tied["model"](input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  got = _logits(tied["lm"], jnp.asarray(ids), jnp.asarray(mask), None)
  real = mask.astype(bool)
  assert rel_err(np.asarray(got)[real], want.numpy()[real]) <= 1e-5


def test_cached_decoding_equals_full_forward(reference):
  lm = reference["lm"]
  ids, mask = padded_batch(seed=1)
  pos = np.clip(mask.cumsum(-1) - 1, 0, None)
  full = np.asarray(_logits(lm, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos)))

  @nnx.jit
  def run(lm, ids, mask, pos):
    cache = lm.init_cache(2, 16)
    prefix, cache = lm.step(lm.embed(ids[:, :7]), mask[:, :7], pos[:, :7], cache)
    outs = [prefix]
    for i in range(7, ids.shape[1]):  # then one token at a time
      logits, cache = lm.step(lm.embed(ids[:, i:i + 1]), mask[:, i:i + 1], pos[:, i:i + 1], cache)
      outs.append(logits)
    return jnp.concatenate(outs, axis=1)

  stepped = np.asarray(run(lm, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos)))
  real = mask.astype(bool)
  assert rel_err(stepped[real], full[real]) <= 1e-5


def test_greedy_generation_matches_transformers_generate(reference):
  ids, mask = padded_batch(seed=2, t=9)
  n_new = 10
  with torch.no_grad():
    want = reference["model"].generate(
        input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
        max_new_tokens=n_new, eos_token_id=2, pad_token_id=0).numpy()[:, ids.shape[1]:]
  out = llama.generate(reference["lm"], jnp.asarray(ids), mask, max_new_tokens=n_new)
  got = out.tokens[:, :want.shape[1]]
  print(f"Llama {reference['kind']} greedy tokens: ours {got.tolist()} transformers {want.tolist()}")
  np.testing.assert_array_equal(got, want)
  assert (out.tokens[:, want.shape[1]:] == 0).all()
  # The same through inputs_embeds (how the critic feeds spliced image features).
  embeds = reference["model"].get_input_embeddings()(torch.from_numpy(ids)).detach().numpy()
  out_e = llama.generate(reference["lm"], inputs_embeds=jnp.asarray(embeds), attention_mask=mask,
                         max_new_tokens=n_new)
  np.testing.assert_array_equal(out_e.tokens, out.tokens)


def test_sampling_filters_match_transformers_warpers():
  from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                      TopPLogitsWarper)

  scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
  for temperature, top_k, top_p in ((0.2, 50, 1.0), (0.7, 5, 0.9), (1.3, 0, 0.5)):
    want = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k:
      want = TopKLogitsWarper(top_k)(None, want)
    if top_p < 1:
      want = TopPLogitsWarper(top_p)(None, want)
    got = np.asarray(llama.filter_logits(jnp.asarray(scores.numpy()), temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want.numpy()))
    finite = ~np.isinf(got)
    np.testing.assert_allclose(got[finite], want.numpy()[finite], rtol=1e-6)


def test_sampling_is_reproducible_and_nucleus_of_one_is_greedy(mha):
  lm = mha["lm"]
  ids, mask = padded_batch(seed=3, t=9)
  kw = dict(max_new_tokens=10, eos_token_ids=())
  a = llama.generate(lm, jnp.asarray(ids), mask, temperature=1.0, top_p=0.9, rng=7, **kw)
  b = llama.generate(lm, jnp.asarray(ids), mask, temperature=1.0, top_p=0.9, rng=7, **kw)
  c = llama.generate(lm, jnp.asarray(ids), mask, temperature=1.0, top_p=0.9, rng=8, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  greedy = llama.generate(lm, jnp.asarray(ids), mask, **kw)
  narrow = llama.generate(lm, jnp.asarray(ids), mask, temperature=0.5, top_p=1e-6, rng=1, **kw)
  np.testing.assert_array_equal(narrow.tokens, greedy.tokens)


def test_stop_sequences_end_each_row(mha):
  lm = mha["lm"]
  ids, mask = padded_batch(seed=4, t=9)
  # (Same prompt length, token budget and stop-table shape as elsewhere: one compiled program.)
  never = [[VOCAB - 1, VOCAB - 2, VOCAB - 3], [VOCAB - 3, VOCAB - 2, VOCAB - 1]]
  free = llama.generate(lm, jnp.asarray(ids), mask, max_new_tokens=10, eos_token_ids=(),
                        stop_token_ids=never)
  assert not free.stopped.any() and (free.lengths == 10).all()
  stop = free.tokens[0, 3:5].tolist()  # row 0 spells this at steps 3-4
  out = llama.generate(lm, jnp.asarray(ids), mask, max_new_tokens=10, eos_token_ids=(),
                       stop_token_ids=[stop, never[0]])
  first = next(i for i in range(1, 10) if free.tokens[0, i - 1:i + 1].tolist() == stop)
  assert out.stopped[0] and out.lengths[0] == first + 1
  np.testing.assert_array_equal(out.tokens[0, :first + 1], free.tokens[0, :first + 1])
  assert (out.tokens[0, first + 1:] == 0).all()


def test_stop_strings_and_decoding_with_a_tokenizer():
  tok = byte_tokenizer()
  assert llama.stop_sequences(tok, ["</s>", "<|im_end|>", "##"]) == [[2], [3], tok("##").input_ids[1:]]
  answer = tok("Good. Fine motion.##extra", add_special_tokens=False).input_ids
  tokens = np.zeros((2, 40), np.int32)
  tokens[0, :len(answer)] = answer
  tokens[1, :5] = tok(" Bad", add_special_tokens=False).input_ids + [2]
  out = llama.GenerateOutput(tokens=tokens, lengths=np.array([len(answer), 5]),
                             stopped=np.array([True, True]))
  assert llama.decode_texts(tok, out, ["##", "</s>"]) == ["Good. Fine motion.", "Bad"]


def test_vila_llm_folder_and_converted_roundtrip(mha, tmp_path):
  root = tmp_path / "vila"
  os.makedirs(root)
  os.symlink(mha["folder"], root / "llm")
  (root / "config.json").write_text(json.dumps({"llm_cfg": {}, "vision_tower_cfg": {}}))
  lm = llama.load(str(root))
  ids, mask = padded_batch(seed=5)
  want = np.asarray(_logits(mha["lm"], jnp.asarray(ids), jnp.asarray(mask), None))
  np.testing.assert_array_equal(np.asarray(_logits(lm, jnp.asarray(ids), jnp.asarray(mask), None)),
                                want)
  back = llama.load(llama.save(lm, str(tmp_path / "conv")))
  assert back.config == lm.config
  np.testing.assert_array_equal(
      np.asarray(_logits(back, jnp.asarray(ids), jnp.asarray(mask), None)), want)


def test_sharded_equals_unsharded(gqa):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  sharded = llama.load(gqa["folder"], mesh=mesh)
  spec = tuple(sharded.layers.layers.attn.k.kernel[...].sharding.spec)
  assert spec == (None, "fsdp", "tensor", None)
  ids, mask = padded_batch(seed=6)
  ids, mask = np.concatenate([ids] * 2), np.concatenate([mask] * 2)  # batch 4 over fsdp
  want = np.asarray(_logits(gqa["lm"], jnp.asarray(ids), jnp.asarray(mask), None))
  with parallel.use_mesh(mesh):
    got = _logits(sharded, jnp.asarray(ids), jnp.asarray(mask), None)
  assert rel_err(got, want) <= 1e-6


def test_bad_inputs_are_named(mha):
  lm = mha["lm"]
  with pytest.raises(ValueError, match="left-padded"):
    llama.generate(lm, jnp.zeros((2, 5), jnp.int32), np.array([[1, 1, 1, 0, 0]] * 2))
  with pytest.raises(ValueError, match="exactly one"):
    lm(None)
  with pytest.raises(ValueError, match=r"inputs_embeds must be \[B, T, 32\]"):
    lm(inputs_embeds=jnp.zeros((1, 3, 16)))

"""T5 encoder parity with transformers' T5EncoderModel, loading paths, sharding and the tokenizer."""

import copy
import dataclasses
import io
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError, SafetensorsFile, write_safetensors
from lift_jax.models import t5
from tests.reference import perturb_, rel_err, save_sharded

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
            relative_attention_max_distance=20, dropout_rate=0.0)
LENGTH = 40  # longer than max_distance, so the log-spaced and capped buckets are used


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)


def forward(model, ids, mask=None):
  return np.asarray(_forward(model, jnp.asarray(ids), None if mask is None else jnp.asarray(mask)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A perturbed tiny T5EncoderModel, its outputs on a padded batch, and folders holding it."""
  torch.manual_seed(0)
  model = perturb_(T5EncoderModel(HFT5Config(**TINY)).eval())
  ids = torch.randint(2, TINY["vocab_size"], (2, LENGTH))
  ids[0, -1] = 1
  ids[1, 25] = 1
  ids[1, 26:] = 0  # the second prompt is shorter: </s> then padding
  mask = (ids != 0).long()
  mask[1, 25] = 1
  with torch.no_grad():
    out = model(input_ids=ids).last_hidden_state.numpy()
    out_masked = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  root = tmp_path_factory.mktemp("t5")
  pretrained = str(root / "pretrained")  # what save_pretrained writes: shards + index, one tie key
  model.save_pretrained(pretrained, max_shard_size="40KB")
  # A raw state dict (both tied keys) in a pipeline root's text_encoder/ folder.
  pipeline = str(root / "pipeline")
  save_sharded(model, os.path.join(pipeline, "text_encoder"), model.config.to_dict(),
               weights_name="model")
  return dict(model=model, ids=ids.numpy(), mask=mask.numpy(), out=out, out_masked=out_masked,
              pretrained=pretrained, pipeline=pipeline, root=root)


@pytest.fixture(scope="module")
def encoder(reference):
  return t5.load_encoder(reference["pretrained"])


def test_relative_position_buckets_match_transformers():
  rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
  for buckets, distance in ((32, 128), (8, 20), (16, 64)):
    ref = T5Attention._relative_position_bucket(rel, True, buckets, distance).numpy()
    ours = t5.relative_position_buckets(300, 300, num_buckets=buckets, max_distance=distance)
    np.testing.assert_array_equal(ours, ref)


def test_config_from_transformers():
  xxl = HFT5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   feed_forward_proj="gated-gelu").to_dict()
  assert t5.T5Config.from_hf_config(xxl) == t5.T5Config.t5_v1_1_xxl()
  cfg = t5.T5Config.from_hf_config(HFT5Config(**TINY).to_dict(), dtype="bfloat16")
  assert (cfg.d_model, cfg.is_gated, cfg.activation, cfg.dtype) == (32, True, "gelu_tanh", "bfloat16")
  assert t5.T5Config.from_hf_config(cfg.to_hf_config()) == dataclasses.replace(cfg, dtype="float32")
  relu = t5.T5Config.from_hf_config({k: v for k, v in TINY.items() if k != "feed_forward_proj"})
  assert (relu.is_gated, relu.activation) == (False, "relu")  # transformers' default
  with pytest.raises(ValueError, match="umt5"):
    t5.T5Config.from_hf_config({**TINY, "model_type": "umt5"})
  with pytest.raises(ValueError, match="d_ff"):
    t5.T5Config.from_hf_config({k: v for k, v in TINY.items() if k != "d_ff"})


def test_xxl_preset_shapes():
  """The CogVideoX text encoder, built abstractly: 4.76 B parameters, every one with axis names."""
  cfg = t5.T5Config.t5_v1_1_xxl(dtype="bfloat16", param_dtype="bfloat16")
  model = nnx.eval_shape(lambda: t5.T5Encoder(cfg, rngs=nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert sum(p.size for p in params) == 4_762_310_656
  assert all(len(p.get_metadata()["out_sharding"]) == p.ndim for p in params)
  assert model.blocks.layers.attn.q.kernel.shape == (24, 4096, 64, 64)


def test_parity_pretrained_folder(reference, encoder):
  e0 = rel_err(forward(encoder, reference["ids"]), reference["out"])
  e1 = rel_err(forward(encoder, reference["ids"], reference["mask"]), reference["out_masked"])
  print(f"T5 fp32 rel err: no mask {e0:.2e}, mask {e1:.2e}")
  assert e0 <= 1e-5 and e1 <= 1e-5
  # The mask matters here, so the masked comparison tests something.
  assert rel_err(reference["out_masked"], reference["out"]) > 1e-2


def test_parity_pipeline_root_with_both_tied_keys(reference):
  enc = t5.load_encoder(reference["pipeline"])
  assert rel_err(forward(enc, reference["ids"]), reference["out"]) <= 1e-5


def test_converted_round_trip(reference, encoder, tmp_path):
  dst = t5.save_encoder(encoder, str(tmp_path / "converted"))
  with pytest.raises(FileExistsError):
    t5.save_encoder(encoder, dst)
  back = t5.load_encoder(dst, remat="full")
  assert back.config.remat == "full"
  out = forward(back, reference["ids"], reference["mask"])
  np.testing.assert_array_equal(out, forward(encoder, reference["ids"], reference["mask"]))
  assert rel_err(out, reference["out_masked"]) <= 1e-5


def test_sharded_matches_unsharded(reference, encoder, tmp_path):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  sharded = t5.load_encoder(reference["pretrained"], mesh=mesh)
  q_spec = sharded.blocks.layers.attn.q.kernel[...].sharding.spec
  assert tuple(q_spec) == (None, "fsdp", "tensor", None)
  assert tuple(sharded.shared[...].sharding.spec) == ("tensor", "fsdp")
  with parallel.use_mesh(mesh):
    out = forward(sharded, reference["ids"], reference["mask"])
  want = forward(encoder, reference["ids"], reference["mask"])
  err = rel_err(out, want)
  print(f"T5 sharded (fsdp 4 x tensor 2) vs unsharded rel err: {err:.2e}")
  assert err <= 1e-6
  restored = t5.load_encoder(t5.save_encoder(sharded, str(tmp_path / "conv")), mesh=mesh)
  assert restored.blocks.layers.ffn.up.kernel[...].sharding.spec == \
      sharded.blocks.layers.ffn.up.kernel[...].sharding.spec


def test_bfloat16_as_close_as_torch_bfloat16(reference):
  """bf16 is not held to 1e-5: it must stay as close to fp32 as transformers' own bf16 run."""
  enc = t5.load_encoder(reference["pretrained"], dtype="bfloat16")
  assert enc.shared[...].dtype == jnp.bfloat16
  out = forward(enc, reference["ids"], reference["mask"])
  assert out.dtype == jnp.bfloat16
  with torch.no_grad():
    torch_bf16 = copy.deepcopy(reference["model"]).to(torch.bfloat16)(
        input_ids=torch.from_numpy(reference["ids"]),
        attention_mask=torch.from_numpy(reference["mask"])).last_hidden_state.float()
  ours = rel_err(out.astype(np.float32), reference["out_masked"])
  theirs = rel_err(torch_bf16, reference["out_masked"])
  print(f"T5 bf16 vs fp32 rel err: ours {ours:.2e}, transformers bf16 {theirs:.2e}")
  assert ours <= 1.5 * theirs + 1e-3


def test_missing_key_and_config_errors(reference, tmp_path):
  src = reference["pretrained"]
  state = {}
  for name in os.listdir(src):
    if name.endswith(".safetensors"):
      f = SafetensorsFile(os.path.join(src, name))
      state.update({k: f.read(k) for k in f.keys()})
  shared = state.pop("shared.weight", None)
  state.setdefault("encoder.embed_tokens.weight", shared)
  state.pop("encoder.block.1.layer.1.DenseReluDense.wi_1.weight")
  broken = tmp_path / "broken"
  broken.mkdir()
  shutil.copy(os.path.join(src, "config.json"), broken / "config.json")
  write_safetensors(str(broken / "model.safetensors"), state)
  with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\).*block\.1\.layer\.1\."
                                            r"DenseReluDense\.wi_1\.weight"):
    t5.load_encoder(str(broken))
  # Only the tied name `encoder.embed_tokens.weight` is present: it fills the embedding.
  state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"] = np.zeros((48, 32), np.float32)
  write_safetensors(str(broken / "model.safetensors"), state)
  enc = t5.load_encoder(str(broken))
  np.testing.assert_array_equal(np.asarray(enc.shared[...]),
                                reference["model"].shared.weight.detach().numpy())
  os.remove(broken / "config.json")
  with pytest.raises(CheckpointError, match="config.json"):
    t5.load_encoder(str(broken))


# ----------------------------------------------------------------------------- tokenizer

SENTENCES = ["a panda playing guitar in a bamboo forest", "a cat sits on the mat",
             "the quick brown fox jumps over the lazy dog",
             "a video of waves crashing on a rocky beach at sunset",
             "two people walking a dog in the park"]


@pytest.fixture(scope="module")
def tokenizer_root(tmp_path_factory):
  """A pipeline root whose tokenizer/ folder looks like CogVideoX's: spiece.model + config."""
  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES * 20), model_writer=buf, vocab_size=60,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
      eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
  root = tmp_path_factory.mktemp("pipeline")
  folder = root / "tokenizer"
  folder.mkdir()
  (folder / "spiece.model").write_bytes(buf.getvalue())
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "T5Tokenizer", "model_max_length": 226, "extra_ids": 0,
       "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
  return str(root)


def test_tokenizer_pads_and_truncates(tokenizer_root, caplog):
  from transformers import AutoTokenizer
  tok = t5.load_tokenizer(tokenizer_root)
  reference = AutoTokenizer.from_pretrained(os.path.join(tokenizer_root, "tokenizer"))
  long_prompt = " ".join(SENTENCES * 12)
  prompts = ["a panda playing guitar", "", long_prompt]
  with caplog.at_level(logging.WARNING, logger="lift_jax.models.t5.tokenizer"):
    ids = tok.encode(prompts)
  assert ids.shape == (3, 226) and ids.dtype == np.int32
  assert tok.eos_id == 1 and tok.pad_id == 0
  short = reference("a panda playing guitar").input_ids
  assert short[-1] == 1
  np.testing.assert_array_equal(ids[0, :len(short)], short)
  assert (ids[0, len(short):] == 0).all()
  np.testing.assert_array_equal(ids[1], [1] + [0] * 225)  # the negative prompt ""
  full = reference(long_prompt).input_ids
  assert len(full) > 226
  np.testing.assert_array_equal(ids[2], full[:225] + [1])  # cut, still ends with </s>
  assert "prompt 2 was truncated" in caplog.text
  np.testing.assert_array_equal(tok("a cat"), tok.encode(["a cat"]))
  with pytest.raises(CheckpointError, match="no tokenizer found"):
    t5.load_tokenizer(os.path.dirname(tokenizer_root))

"""The prepare stage (lift_jax.stages.prepare, tools/prepare_data.py) end to end: 3 tiny generated
videos + a corrupt one -> a loadable dataset."""

import io
import json
import os

import numpy as np
import pytest

from lift_jax.data import generated, loaders, video
from lift_jax.stages import prepare as tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_tool(args, encoders=None) -> int:
  """The command with `args`; its exit code."""
  try:
    tool.main(["prepare"] + args, encoders=encoders)
  except SystemExit as exit_:
    return exit_.code or 0
  raise AssertionError("the command did not exit")


def stand_in_encoders():
  """Deterministic functions with the real encoders' shapes: 4x time, 8x space, 4 channels."""
  calls = {"video": 0, "text": []}

  def encode_video(x):
    b, _, f, h, w = x.shape
    calls["video"] += b  # clips encoded
    pooled = x[:, :, ::4, ::8, ::8]                             # [B, 3, (F-1)//4+1, h/8, w/8]
    mean = np.concatenate([pooled, pooled.mean(1, keepdims=True)], axis=1)
    return mean, np.full_like(mean, -3.0)

  def encode_text(prompts):
    calls["text"].append(list(prompts))
    return np.stack([np.full((10, 6), len(p), np.float32) for p in prompts])

  return tool.Encoders(encode_video, encode_text, 0.7), calls


@pytest.fixture
def work(tmp_path):
  """generate's and score's outputs: 3 good videos, a corrupt one, a missing one, one real video."""
  rng = np.random.default_rng(0)
  vids = tmp_path / "videos"
  manifest, scores = [], []
  for i in range(3):
    frames = rng.integers(0, 255, (9, 16, 24, 3), dtype=np.uint8)
    video.write_video(str(vids / f"v{i}.mp4"), frames)
    manifest.append({"prompt": f"prompt {i % 2}", "seed": i, "path": f"v{i}.mp4"})
    scores.append({"path": f"videos/v{i}.mp4", "reward": 0.3 + 0.1 * i,
                   "labels": {"a": "Good", "b": "Good" if i == 0 else "Bad"}})
  (vids / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
  manifest += [{"prompt": "corrupt", "seed": 9, "path": "corrupt.mp4"},
               {"prompt": "gone", "seed": 10, "path": "missing.mp4"}]
  scores += [{"path": "videos/corrupt.mp4", "reward": 0.5},
             {"path": "videos/missing.mp4", "reward": 0.5}]
  video.write_video(str(tmp_path / "real0.mp4"), rng.integers(0, 255, (12, 32, 32, 3), np.uint8))
  for name, rows in [("videos/manifest.jsonl", manifest), ("scores.jsonl", scores),
                     ("real.jsonl", [{"path": "real0.mp4", "caption": "a real video"}])]:
    (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
  return tmp_path


def argv(work, *extra):
  return ["--manifest", str(work / "videos" / "manifest.jsonl"),
          "--scores", str(work / "scores.jsonl"), "--real", str(work / "real.jsonl"),
          "--out", str(work / "prepared"), "--config.num_frames=9", "--config.height=16",
          "--config.width=24", "--noprogress", "--config.compilation_cache=", *extra]


def test_end_to_end_with_stand_in_encoders(work, capsys):
  enc, calls = stand_in_encoders()
  assert run_tool(argv(work, "--config.text_batch=2", "--config.embed_dtype=float16"),
                  encoders=enc) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["written"] == {"synthetic": 3, "real": 1}
  assert summary["num_skipped"] == 2
  assert any("corrupt.mp4" in s for s in summary["skipped"])
  assert any("missing.mp4: no such file" in s for s in summary["skipped"])
  assert calls["video"] == 4  # each readable video encoded once
  assert sorted(p for batch in calls["text"] for p in batch) == sorted(
      ["prompt 0", "prompt 1", "corrupt", "gone", "a real video"])  # each caption once

  out = str(work / "prepared")
  assert sorted(os.listdir(work)) == ["prepared", "real.jsonl", "real0.mp4", "scores.jsonl",
                                      "videos"]
  log = json.load(open(os.path.join(out, generated.PREPARE_LOG)))
  assert log["num_skipped"] == 2
  src = generated.open_dataset(out)
  assert (len(src["synthetic"]), len(src["real"])) == (3, 1)
  ex = src["synthetic"][1]
  assert ex["latent_mean"].shape == (4, 3, 2, 3) and ex["latent_mean"].dtype == np.float32
  assert ex["text_embeds"].shape == (10, 6) and ex["text_embeds"].dtype == np.float16
  assert ex["path"].decode() == str(work / "videos" / "v1.mp4")
  assert ex["caption"] == b"prompt 1" and ex["reward"] == pytest.approx(0.4)
  assert not ex["all_good"] and src["synthetic"][0]["all_good"]
  # The stored mean is the stand-in's output on the prepared clip of that video.
  clip = video.load_clip(str(work / "videos" / "v1.mp4"), num_frames=9, height=16, width=24)
  np.testing.assert_allclose(ex["latent_mean"], enc.encode_video(clip[None])[0][0], atol=1e-6)
  real = src["real"][0]  # 32x32 squashed to 16x24, 12 frames cut to 9
  assert real["is_real"] and real["reward"] == 1.0 and real["latent_mean"].shape == (4, 3, 2, 3)
  assert generated.dataset_metadata(out)["scaling_factor"] == 0.7

  batch = loaders.make_dataset(out, batch_size=2, num_epochs=1, process_index=0,
                               process_count=1)[0]
  assert batch["latents"].shape == (2, 3, 4, 2, 3)


def test_rerun_needs_overwrite(work, capsys):
  enc, _ = stand_in_encoders()
  assert run_tool(argv(work), encoders=enc) == 0
  before = os.listdir(work / "prepared")
  assert run_tool(argv(work), encoders=enc) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert os.listdir(work / "prepared") == before
  assert run_tool(argv(work, "--overwrite", "--config.latent_dtype=float16"), encoders=enc) == 0
  src = generated.open_dataset(str(work / "prepared"))
  assert src["synthetic"][0]["latent_mean"].dtype == np.float16


def test_bad_inputs_are_reported_not_raised(work, capsys):
  enc, _ = stand_in_encoders()
  (work / "empty_scores.jsonl").write_text("")
  args = argv(work)
  args[args.index("--scores") + 1] = str(work / "empty_scores.jsonl")
  del args[args.index("--real"):args.index("--real") + 2]
  assert run_tool(args, encoders=enc) == 2
  assert "no records" in capsys.readouterr().err
  args = argv(work, "--config.num_frames=49")  # every video is too short for a 49-frame clip
  assert run_tool(args, encoders=enc) == 2
  assert "no readable video" in capsys.readouterr().err
  assert not os.path.exists(work / "prepared")
  assert run_tool(argv(work), encoders=None) == 2  # no models given
  assert "--model" in capsys.readouterr().err


def random_model(make, seed=0):
  """A model with random parameters, built abstractly: eager init of every layer is slow on CPU."""
  import jax
  from flax import nnx

  graphdef, state = nnx.split(nnx.eval_shape(make))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.2).astype(s.dtype), state)
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
  """A tiny random VAE and T5 written as converted checkpoints, and a sentencepiece tokenizer."""
  import sentencepiece as spm
  from flax import nnx

  # The public entry points; a broken VAE import fails here (it is not skipped).
  from lift_jax.models.cogvideox import AutoencoderKLCogVideoX, CogVideoXVAEConfig, save_vae
  from lift_jax.models.t5 import T5Config, T5Encoder, save_encoder

  root = tmp_path_factory.mktemp("models")
  vae_cfg = CogVideoXVAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                               norm_num_groups=4, latent_channels=4, sample_height=16,
                               sample_width=24, scaling_factor=0.7)
  save_vae(random_model(lambda: AutoencoderKLCogVideoX(vae_cfg, rngs=nnx.Rngs(0))),
           str(root / "vae"))
  t5_cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20)
  save_encoder(random_model(lambda: T5Encoder(t5_cfg, rngs=nnx.Rngs(0))), str(root / "t5"))
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["a prompt about a cat", "prompt one", "a real video"] * 20),
      model_writer=buf, vocab_size=40, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
      hard_vocab_limit=False, minloglevel=2)
  tok = root / "tokenizer"
  tok.mkdir()
  (tok / "spiece.model").write_bytes(buf.getvalue())
  (tok / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "T5Tokenizer", "model_max_length": 226, "extra_ids": 0,
       "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
  return root


def test_end_to_end_with_tiny_real_models(work, tiny_models, capsys):
  args = argv(work, "--vae", str(tiny_models / "vae"), "--t5", str(tiny_models / "t5"),
              "--tokenizer", str(tiny_models / "tokenizer"), "--config.vae_tiling=False")
  assert run_tool(args) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["written"] == {"synthetic": 3, "real": 1} and summary["num_skipped"] == 2
  src = generated.open_dataset(str(work / "prepared"))
  ex = src["synthetic"][0]
  assert ex["latent_mean"].shape == (4, 3, 2, 3)
  assert ex["text_embeds"].shape == (226, 16) and ex["text_embeds"].dtype.name == "bfloat16"
  assert np.isfinite(ex["latent_logvar"]).all()
  assert generated.dataset_metadata(str(work / "prepared"))["scaling_factor"] == 0.7


def test_lifts_data_json_in_and_out(work, capsys):
  """prepare reads LiFT's fine-tuning list, and exports the loop's joined set in that layout."""
  enc, _ = stand_in_encoders()
  exported = work / "exported.json"
  assert run_tool(argv(work, "--export_data_json", str(exported)), encoders=enc) == 0
  capsys.readouterr()
  rows = json.load(open(exported))
  assert [(os.path.basename(r["video"]), r["score"]) for r in rows] == [
      ("v0.mp4", 0.3), ("v1.mp4", 0.4), ("v2.mp4", 0.5), ("corrupt.mp4", 0.5),
      ("missing.mp4", 0.5), ("real0.mp4", 1.0)]
  lift_list = [{"video": f"v{i}.mp4", "caption": f"prompt {i}", "score": s}
               for i, s in enumerate((0.62, 0.1, 0.9))]
  (work / "data.json").write_text(json.dumps(lift_list, indent=4))
  args = ["--data_json", str(work / "data.json"), "--video_root", str(work / "videos"),
          "--out", str(work / "from_lift"), "--config.num_frames=9", "--config.height=16",
          "--config.width=24", "--noprogress", "--config.compilation_cache="]
  assert run_tool(args, encoders=enc) == 0
  assert json.loads(capsys.readouterr().out)["written"] == {"synthetic": 3, "real": 0}
  src = generated.open_dataset(str(work / "from_lift"))["synthetic"]
  assert [float(src[i]["reward"]) for i in range(3)] == pytest.approx([0.62, 0.1, 0.9])
  assert [bool(src[i]["all_good"]) for i in range(3)] == [False, False, True]
  (work / "template.json").write_text(
      '[\n    {\n        "video": "/path/to/video",\n        "caption": "video_captoin",\n'
      '        "score": "reward_score"\n    },\n]\n')
  args[1], args[5] = str(work / "template.json"), str(work / "from_template")
  assert run_tool(args, encoders=enc) == 2
  err = capsys.readouterr().err
  assert str(work / "template.json") in err and "published template" in err

"""Critic scoring: the two modes agree on a tiny critic whose answers are forced, and the batching,
unparseable-answer policy and manifest stage (resume, torn lines, unreadable videos) on a stub.

The forced critic: a tiny VILA folder (SigLIP + projector + Llama, as in test_critic.py) with a
word-level tokenizer, whose decoder layers add nothing (o_proj and down_proj zero), so the next
token depends on the current one only; embeddings and lm_head then spell a chosen answer,
e.g. ":" -> "Bad" -> "." -> "blurry" -> "</s>".
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM
from transformers import SiglipVisionConfig as HFSiglipVisionConfig
from transformers import SiglipVisionModel as HFSiglipVisionModel

from lift_jax.data.video import VideoReadError
from lift_jax.lift import reward as reward_lib
from lift_jax.models import critic as critic_lib
from lift_jax.models.critic import prompts
from lift_jax.stages import score as score_stage
from tests.models.test_critic import VISION, Projector, write_vila_folder
from tests.reference import perturb_

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_end|>", "<|im_start|>"]
WORDS = ["Good", "Normal", "Bad", ".", ":", "ASSISTANT", "USER", "assistant", "user", "system",
         "fine", "blurry", "jitter", "Hmm", "the", "a", "video"]
REASONS = {"Good": "fine", "Normal": "jitter", "Bad": "blurry"}
HIDDEN = 32


def word_tokenizer():
  """Whole words and punctuation as tokens (unknown words -> <unk>), <s> prepended."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                     special_tokens=[("<s>", 1)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<unk>",
                                 additional_special_tokens=["<|im_end|>", "<|im_start|>"])


def answer_chain(label: str | None, *, prompt_end: str = ":") -> dict[str, str]:
  """Token -> next token spelling "<label> . <reason> </s>" (or "Hmm </s>" for label None)."""
  if label is None:
    return {prompt_end: "Hmm", "Hmm": "</s>"}
  return {prompt_end: label, label: ".", ".": REASONS[label], REASONS[label]: "</s>"}


def chain_weights(tok, chain: dict[str, str], embed: np.ndarray):
  """(embeddings [V,D], lm_head [V,D]): source k is the one-hot e_k, whose logits pick its next."""
  embed = np.array(embed, np.float32)
  head = np.zeros_like(embed)
  for k, (src, dst) in enumerate(chain.items()):
    s, d = tok.convert_tokens_to_ids(src), tok.convert_tokens_to_ids(dst)
    embed[s] = 0
    embed[s, k] = 1.0
    head[d, k] = 20.0  # after RMSNorm e_k is sqrt(D)·e_k: logit ~113, the rest 0
  return embed, head


def write_forced_critic(root, chain: dict[str, str] | None = None, seed: int = 0) -> str:
  """A tiny VILA folder whose LLM answers along `chain` whatever the video (see module doc)."""
  torch.manual_seed(seed)
  tok = word_tokenizer()
  vision = perturb_(HFSiglipVisionModel(HFSiglipVisionConfig(**VISION)).eval())
  projector = perturb_(Projector(32, HIDDEN).eval())
  llm = HFLlamaForCausalLM(HFLlamaConfig(
      vocab_size=len(SPECIALS + WORDS), hidden_size=HIDDEN, intermediate_size=48,
      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
  with torch.no_grad():
    for layer in llm.model.layers:
      layer.self_attn.o_proj.weight.zero_()
      layer.mlp.down_proj.weight.zero_()
    llm.model.norm.weight.fill_(1.0)
    embed, head = chain_weights(tok, chain or answer_chain("Good"),
                                llm.model.embed_tokens.weight.numpy())
    llm.model.embed_tokens.weight.copy_(torch.from_numpy(embed))
    llm.lm_head.weight.copy_(torch.from_numpy(head))
  return write_vila_folder(root, vision, projector, llm, tok)


def force_answers(critic, chain: dict[str, str]) -> None:
  """Rewrites a loaded forced critic's embeddings and head in place (same shapes: no recompile)."""
  lm = critic.model.llm
  embed, head = chain_weights(critic.tokenizer, chain, np.asarray(lm.embed_tokens[...]))
  lm.embed_tokens.value = jnp.asarray(embed)
  lm.lm_head.kernel.value = jnp.asarray(head.T)


def random_videos(n: int, seed: int = 0, frames: int = 9):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (frames, 40, 60, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
  folder = write_forced_critic(tmp_path_factory.mktemp("forced") / "VILA1.5-13b-forced")
  return critic_lib.Critic.load(folder)


# ----------------------------------------------------------------------------- the two modes


def test_logits_and_generate_agree_on_forced_answers(forced):
  videos = random_videos(2)
  px = [forced.pixel_values(v) for v in videos]
  captions = ["A panda eats bamboo.", "Two horses run on a beach."]
  greedy = dict(temperature=0.0, max_new_tokens=6)
  for label in reward_lib.LABELS:
    force_answers(forced, answer_chain(label))
    gen = score_stage.Scorer(forced, "generate", sampling=greedy, batch_videos=2).score(px, captions)
    log = score_stage.Scorer(forced, "logits", batch_videos=2).score(px, captions)
    for g, lg in zip(gen, log):
      assert set(g.labels) == set(prompts.QUESTION_KEYS)
      assert g.labels == lg.labels == {d: label for d in prompts.QUESTION_KEYS}
      assert g.reasons == {d: REASONS[label] for d in prompts.QUESTION_KEYS}, g.answers
      assert g.reward == pytest.approx(reward_lib.REWARD_MAP[label]) == lg.reward
      assert g.scores == lg.scores and not g.unparsed and not lg.unparsed
      for d in prompts.QUESTION_KEYS:
        assert lg.probs[d][label] > 0.99 and lg.label_mass[d] > 0.99
      assert lg.expected_reward == pytest.approx(lg.reward, abs=1e-3)
      row = g.to_json()
      assert row["mode"] == "generate" and "probs" not in row and row["answers"]
      m = "motion issues"
      print(f"forced {label}: generate {g.answers[m]!r} -> {g.labels[m]}, logits "
            f"P={lg.probs[m][label]:.4f}")


def test_unparseable_answers_are_counted_not_good(forced):
  force_answers(forced, answer_chain(None))
  px = [forced.pixel_values(v) for v in random_videos(2)]
  captions = ["a video", "the video"]
  stats = reward_lib.LabelStats()
  greedy = dict(temperature=0.0, max_new_tokens=6)
  gen = score_stage.Scorer(forced, "generate", sampling=greedy, batch_videos=2).score(
      px, captions, keys=["a.mp4", "b.mp4"], stats=stats)
  assert all(g.reward is None and g.labels == {d: None for d in prompts.QUESTION_KEYS}
             and g.answers["fidelity issues"] == "Hmm" for g in gen)
  assert stats.num_unparseable == 6 and stats.examples[0]["path"] == "a.mp4"
  log = score_stage.Scorer(forced, "logits", batch_videos=2).score(px, captions)
  assert all(lg.reward is None and max(lg.label_mass.values()) < 1e-3 for lg in log)
  # Policy "bad": scored as Bad, the dimensions flagged.
  bad = score_stage.Scorer(forced, "logits", batch_videos=2,
                       reward_config=reward_lib.RewardConfig(unparseable="bad")).score(px, captions)
  assert bad[0].reward == pytest.approx(0.05) and set(bad[0].unparsed) == set(prompts.QUESTION_KEYS)
  # LiFT's own rule reads "Hmm" as Good; the stats still count it.
  stats = reward_lib.LabelStats()
  lift = score_stage.Scorer(forced, "generate", sampling=greedy, batch_videos=2,
                        reward_config=reward_lib.RewardConfig(parse_rule="lift")).score(
                            px, captions, stats=stats)
  assert lift[0].reward == pytest.approx(0.9) and stats.num_unparseable == 6


def test_logits_mode_needs_distinct_label_tokens(forced):
  from tests.models.test_llama import byte_tokenizer
  byte = critic_lib.Critic(forced.model, byte_tokenizer(), "vicuna_v1")  # " " starts all three
  with pytest.raises(ValueError, match="share a first token"):
    score_stage.Scorer(byte, "logits")
  with pytest.raises(ValueError, match="num_beams"):
    score_stage.Scorer(forced, "generate", sampling=dict(num_beams=4))
  with pytest.raises(ValueError, match="mode"):
    score_stage.Scorer(forced, "beam")


# ----------------------------------------------------------------------------- plumbing (a stub)


class StubCritic:
  """Answers by table: video k (its pixel values are [k]) gets ANSWERS[k][question]."""

  def __init__(self, answers):
    self.answers = answers
    self.tokenizer = word_tokenizer()
    self.template = prompts.get_template("vicuna_v1")
    self.calls = []

  def pixel_values(self, video):
    return np.asarray([int(np.asarray(video).ravel()[0])])

  def generate(self, videos, captions, questions, video_index, **kw):
    self.calls.append(len(videos))
    return [self.answers[int(videos[v][0])][q] for q, v in zip(questions, video_index)]

  def label_probs(self, videos, captions, questions, video_index, labels):
    out = []
    for q, v in zip(questions, video_index):
      label = reward_lib.split_answer(self.answers[int(videos[v][0])][q])[0]
      out.append([0.9 if label == x else 0.0 for x in labels])
    return np.asarray(out)


def _answers(*rows):
  return [dict(zip(prompts.QUESTION_KEYS, r)) for r in rows]


STUB = _answers(("Good. Fine.", "Good. ok", "Good."),
                ("Normal: a bit off", " bad - missing legs", "Good. smooth"),
                ("I think it is good", "Good.", "Good."),
                ("Bad. wrong animal", "Bad.", "**Normal** jitter"),
                ("good", "GOOD", "Good"))


def test_batches_keep_order_and_pad_to_one_shape():
  stub = StubCritic(STUB)
  videos = [np.full((2, 2, 2, 3), k, np.uint8) for k in range(5)]
  px = [stub.pixel_values(v) for v in videos]
  sc = score_stage.Scorer(stub, "generate", batch_videos=2, sampling=dict(temperature=0.0))
  out = sc.score(px, ["c"] * 5)
  assert stub.calls == [2, 2, 2]  # the last video padded to a batch of 2
  assert [o.reward for o in out] == pytest.approx([0.9, (0.2 + 0.05 + 0.9) / 3, None, 0.1, 0.9])
  assert out[1].labels == {"semantic consistency": "Normal", "fidelity issues": "Bad",
                           "motion issues": "Good"}
  assert out[1].reasons["fidelity issues"] == "missing legs" and out[2].unparsed == (
      "semantic consistency",)
  one = score_stage.Scorer(stub, "generate", batch_videos=1, sampling=dict(temperature=0.0))
  assert [o.to_json() for o in one.score(px, ["c"] * 5)] == [o.to_json() for o in out]
  lg = score_stage.Scorer(stub, "logits", batch_videos=3).score(px, ["c"] * 5)
  assert [o.labels for o in lg if o.ok] == [o.labels for o in out if o.ok]
  assert lg[2].reward is None and lg[0].expected_reward == pytest.approx(0.9)


def _manifest(tmp_path, n):
  (tmp_path / "videos").mkdir(exist_ok=True)
  rows = [{"prompt": f"caption {k}", "seed": k, "path": f"v{k}.mp4"} for k in range(n)]
  rows.append({"prompt": "broken", "seed": 99, "path": "broken.mp4"})
  path = tmp_path / "videos" / "manifest.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _read(path):
  name = os.path.basename(path)
  if name == "broken.mp4":
    raise VideoReadError(path, "cannot decode: InvalidDataError")
  return np.full((2, 2, 2, 3), int(name[1:-4]), np.uint8)


def test_score_manifest_resumes_and_counts(tmp_path):
  manifest = _manifest(tmp_path, 4)
  out = str(tmp_path / "scores.jsonl")
  sc = score_stage.Scorer(StubCritic(STUB), "generate", batch_videos=2,
                          sampling=dict(temperature=0))
  s = score_stage.score_manifest(sc, manifest, out, read=_read, progress=False)
  counts = (s["videos_in_manifest"], s["scored"], s["unparseable_videos"], s["unreadable"])
  assert counts == (5, 3, 1, 1)
  assert s["unreadable_videos"] == [
      f"{tmp_path}/videos/broken.mp4: cannot decode: InvalidDataError"]
  assert s["unparseable_answers"] == 1 and s["remaining"] == 0
  assert s["mean_reward"] == pytest.approx((0.9 + 1.15 / 3 + 0.1) / 3)
  assert s["label_counts"]["fidelity issues"] == {"Good": 2, "Normal": 0, "Bad": 2}
  rows = [json.loads(x) for x in open(out)]
  assert [r["path"] for r in rows] == ["videos/v0.mp4", "videos/v1.mp4", "videos/v3.mp4"]
  assert rows[1]["labels"]["semantic consistency"] == "Normal" and rows[1]["seed"] == 1
  assert rows[1]["reasons"]["semantic consistency"] == "a bit off" and rows[1]["mode"] == "generate"
  bad = [json.loads(x) for x in open(tmp_path / "scores.unparsed.jsonl")]
  assert bad[0]["path"] == "videos/v2.mp4" and bad[0]["unparsed"] == ["semantic consistency"]
  assert json.load(open(tmp_path / "scores.summary.json"))["scored"] == 3

  # records.join_records reads what we wrote.
  from lift_jax.data import records
  joined = records.join_records(manifest, out)
  assert [r.reward for r in joined.records] == pytest.approx([r["reward"] for r in rows])
  assert len(joined.unscored) == 2 and joined.records[0].all_good

  # A killed run: a torn last line is dropped and that video scored again; the rest are kept.
  with open(out, "r+") as f:
    text = f.read()
    f.seek(0)
    f.truncate()
    f.write(text[:-20])
  manifest = _manifest(tmp_path, 5)  # and one new video
  stub = StubCritic(STUB)
  sc = score_stage.Scorer(stub, "generate", batch_videos=2, sampling=dict(temperature=0))
  s = score_stage.score_manifest(sc, manifest, out, read=_read, progress=False)
  assert s["this_run"]["resumed"] == 3 and s["this_run"]["scored"] == 2  # v3 again and v4
  assert (s["scored"], s["unparseable_videos"], s["unreadable"]) == (4, 1, 1)
  assert [json.loads(x)["path"] for x in open(out)] == [f"videos/v{k}.mp4" for k in (0, 1, 3, 4)]
  with pytest.raises(ValueError, match="mode"):
    score_stage.score_manifest(score_stage.Scorer(stub, "logits"), manifest, out, read=_read,
                               progress=False)
  s = score_stage.score_manifest(score_stage.Scorer(stub, "logits"), manifest, out, read=_read,
                                 progress=False, overwrite=True)
  assert s["this_run"]["resumed"] == 0 and s["scored"] == 4 and s["mode"] == "logits"


def test_manifest_errors_name_the_line(tmp_path):
  manifest = tmp_path / "m.jsonl"
  manifest.write_text(json.dumps({"prompt": "x"}) + "\n")
  sc = score_stage.Scorer(StubCritic(STUB), "generate")
  with pytest.raises(ValueError, match=r"m.jsonl:1: missing field 'path'"):
    score_stage.score_manifest(sc, str(manifest), str(tmp_path / "s.jsonl"), progress=False)
  manifest.write_text(json.dumps({"prompt": "x", "path": "a.mp4"}) + "\n"
                      + json.dumps({"prompt": "y", "path": "./a.mp4"}) + "\n")
  with pytest.raises(ValueError, match=r"m.jsonl:2: .* listed twice"):
    score_stage.score_manifest(sc, str(manifest), str(tmp_path / "s.jsonl"), progress=False)


def test_lift_test_json_in_critic_output_out_and_lift_parse(tmp_path):
  """LiFT's test.json (videos under a root) in; its critic-output layout out beside scores.jsonl;
  LiFT's get_score reading with rounding, and the strict reading's rejects still counted."""
  items = [{"video_id": f"demo_{k}", "video": f"v{k}.mp4", "caption": f"caption {k}"}
           for k in (1, 2, 3)]
  (tmp_path / "test.json").write_text(json.dumps(items, indent=4))
  rc = reward_lib.RewardConfig(parse_rule="lift", round_digits=2)
  sc = score_stage.Scorer(StubCritic(STUB), "generate", batch_videos=2,
                          sampling=dict(temperature=0), reward_config=rc)
  out = tmp_path / "out" / "scores.jsonl"
  s = score_stage.score_manifest(sc, str(tmp_path / "test.json"), str(out), read=_read,
                                 progress=False, video_root=str(tmp_path / "clips"),
                                 lift_output="critic_output_13b.json")
  # By hand: v1 Normal / " bad - ..." (no 'Bad': Good) / Good -> (0.2 + 0.9 + 0.9) / 3 = 0.67;
  # v2 Good x3 (its "I think it is good" has no leading label) -> 0.9; v3 Bad, Bad, Normal -> 0.1.
  rows = [json.loads(x) for x in open(out)]
  assert [r["reward"] for r in rows] == [0.67, 0.9, 0.1]
  assert [r["video_id"] for r in rows] == ["demo_1", "demo_2", "demo_3"]
  assert rows[0]["path"] == str(tmp_path / "clips" / "v1.mp4")
  assert (s["scored"], s["unparseable_videos"]) == (3, 0)
  # " bad - missing legs" is read by the strict rule, "I think it is good" is not: 1 reject.
  assert s["strict_rejects"] == 1 and s["this_run"]["unparseable_answers"] == 1
  lift_out = json.load(open(tmp_path / "out" / "critic_output_13b.json"))
  assert [x["video_id"] for x in lift_out] == ["demo_1", "demo_2", "demo_3"]
  assert lift_out[1] == {"video_id": "demo_2", "video": "v2.mp4", "caption": "caption 2",
                         **STUB[2]}
  assert reward_lib.critic_output_rewards(lift_out) == [0.67, 0.9, 0.1]

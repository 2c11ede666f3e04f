"""Reward map and mean (paper Eq. 2), label parsing of realistic critic answers, weights, config."""

import itertools
import os
import sys

import pytest

from lift_jax.data import records
from lift_jax.lift import reward as R

DIMS = R.DIMENSIONS


def labels(*xs):
  return dict(zip(DIMS, xs))


def test_map_and_mean_are_the_papers():
  assert R.REWARD_MAP == {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
  assert R.reward(labels("Good", "Good", "Good")) == pytest.approx(0.9)
  assert R.reward(labels("Good", "Normal", "Bad")) == pytest.approx((0.9 + 0.2 + 0.05) / 3)
  assert R.reward(labels("Bad", "Bad", "Bad")) == pytest.approx(0.05)
  # LiFT's script rounds to 2 digits: its table of the 10 possible rewards.
  table = {"GGG": 0.90, "GGN": 0.67, "GGB": 0.62, "GNN": 0.43, "GNB": 0.38, "GBB": 0.33,
           "NNN": 0.20, "NNB": 0.15, "NBB": 0.10, "BBB": 0.05}
  full = {"G": "Good", "N": "Normal", "B": "Bad"}
  for key, want in table.items():
    for perm in set(itertools.permutations(key)):
      assert R.reward(labels(*[full[c] for c in perm]), round_digits=2) == want


def test_one_map_with_records():
  from lift_jax.models.critic import prompts
  assert DIMS == prompts.QUESTION_KEYS
  for combo in itertools.product(R.LABELS, repeat=3):
    assert R.reward(labels(*combo)) == pytest.approx(records.reward_from_labels(labels(*combo)))


def test_weights_and_custom_map():
  w = dict(semantic=2.0, fidelity=1.0, motion=1.0)
  assert R.reward(labels("Good", "Normal", "Bad"), weights=w) == pytest.approx(
      (2 * 0.9 + 0.2 + 0.05) / 4)
  # A zero-weight dimension need not have a label.
  assert R.reward(labels("Good", "Bad", None), weights=dict(motion=0)) == pytest.approx(0.475)
  assert R.reward(labels("Good", "Normal", "Bad"),
                  label_scores={"Good": 1, "Normal": 0.5, "Bad": 0}) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="unknown dimension 'style'"):
    R.reward(labels("Good", "Good", "Good"), weights=dict(style=1.0))
  with pytest.raises(ValueError, match="sum to zero"):
    R.resolve_weights(dict(semantic=0, fidelity=0, motion=0))


def test_missing_or_invalid_labels_raise_and_name_the_dimension():
  with pytest.raises(R.MissingLabelError, match="'motion issues'") as err:
    R.reward({"semantic consistency": "Good", "fidelity issues": "Good"},
             weights=dict(semantic=1, fidelity=1, motion=1), where="v.mp4")
  assert err.value.missing == ("motion issues",) and "v.mp4" in str(err.value)
  with pytest.raises(R.MissingLabelError, match="'fidelity issues'"):
    R.reward(labels("Good", None, "Bad"))
  with pytest.raises(R.MissingLabelError, match="'semantic consistency'"):
    R.reward(labels("Great", "Good", "Bad"))
  with pytest.raises(R.MissingLabelError):
    R.reward({})
  # Never silently Good.
  assert isinstance(R.MissingLabelError(["x"]), ValueError)


ANSWERS = [
    ("Good. Basically correct.", "Good", "Basically correct."),
    ("Bad. The crane's eyes in the video were not generated.", "Bad",
     "The crane's eyes in the video were not generated."),
    ("Normal. The panda's movements in the video are basically normal, with slight coordination "
     "issues.", "Normal", "The panda's movements in the video are basically normal, with slight "
     "coordination issues."),
    ("Bad: the horse is missing a leg.", "Bad", "the horse is missing a leg."),
    ("good. fine", "Good", "fine"),
    ("   Normal - mild jitter", "Normal", "mild jitter"),
    ("\n**Bad**: blurry", "Bad", "blurry"),
    ('"Good", no obvious problems', "Good", "no obvious problems"),
    ("BAD", "Bad", ""),
    ("Normal.The subject drifts", "Normal", "The subject drifts"),
    ("Good, Normal or Bad? Bad.", "Good", "Normal or Bad? Bad."),  # the first word wins
]
GARBAGE = ["", "   ", "Goodness, what a video", "The video is Good.", "Not bad at all",
           "I cannot tell.", "Badly rendered hands", "Normally fine", "1. Good", None]


@pytest.mark.parametrize("answer,label,reason", ANSWERS)
def test_parse_label_reads_the_start(answer, label, reason):
  assert R.parse_label(answer) == label
  assert R.split_answer(answer) == (label, reason)


def test_garbage_is_none_and_counted():
  stats = R.LabelStats(max_examples=3)
  for k, answer in enumerate(GARBAGE):
    assert R.parse_label(answer) is None, answer
    stats.add("motion issues", R.parse_label(answer), answer, path=f"v{k}.mp4")
  stats.add("motion issues", "Good", "Good. ok")
  js = stats.to_json()
  assert js["unparseable_answers"] == len(GARBAGE) == stats.num_unparseable
  assert js["unparseable_by_dimension"] == {"motion issues": len(GARBAGE)}
  assert js["label_counts"]["motion issues"] == {"Good": 1, "Normal": 0, "Bad": 0}
  assert [e["path"] for e in js["unparseable_examples"]] == ["v0.mp4", "v1.mp4", "v2.mp4"]


def test_lift_rule_is_the_substring_test_and_still_flagged():
  # process_reward_score.get_score: 'Normal' in text -> 0.2, elif 'Bad' in text -> 0.05, else 0.9.
  assert R.parse_label("Good. Slightly Normal motion.", "lift") == "Normal"
  assert R.parse_label("Good. Bad hands.", "lift") == "Bad"
  assert R.parse_label("bad", "lift") == "Good"  # case-sensitive, as LiFT's
  assert R.parse_label("I cannot tell.", "lift") == "Good"
  stats = R.LabelStats()
  stats.add("fidelity issues", R.parse_label("I cannot tell.", "lift"), "I cannot tell.")
  assert stats.num_unparseable == 1  # labelled Good by LiFT's rule, but reported
  with pytest.raises(ValueError, match="parse rule"):
    R.parse_label("Good", "regex")


def test_config_block_matches_defaults():
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  from configs import critic_13b, critic_40b
  for mod in (critic_13b, critic_40b):
    cfg = R.RewardConfig.from_config(mod.get_config().reward)
    assert dict(cfg.label_scores) == R.REWARD_MAP
    assert cfg.dimension_weights == dict.fromkeys(DIMS, 1.0)
    # The paper configs reproduce LiFT's process_reward_score.py: its reading, rounded to 2.
    assert (cfg.parse_rule, cfg.round_digits) == ("lift", 2)
    assert cfg.reward(labels("Good", "Normal", "Bad")) == round(
        R.reward(labels("Good", "Normal", "Bad")), 2) == 0.38
  assert critic_40b.get_config().critic.template == "hermes-2"
  assert critic_13b.get_config().critic.template == "vicuna_v1"
  s = critic_13b.get_config().sampling
  assert (s.temperature, s.top_p, s.num_beams, s.max_new_tokens) == (0.2, 1.0, 1, 512)
  with pytest.raises(ValueError, match="unparseable"):
    R.RewardConfig(unparseable="good")
  with pytest.raises(ValueError, match="exactly"):
    R.RewardConfig(label_scores={"Good": 1.0})
  with pytest.raises(ValueError, match="unknown reward setting"):
    R.RewardConfig.from_config({"temperature": 1.0})
  c = R.RewardConfig(round_digits=2)
  assert c.reward(labels("Good", "Good", "Normal")) == 0.67
  assert c.expected_score({"Good": 0.5, "Normal": 0.25, "Bad": 0.0}) == pytest.approx(
      (0.5 * 0.9 + 0.25 * 0.2) / 0.75)

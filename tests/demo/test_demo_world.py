"""The demo's claim, for 3 seeds: the critic learns the rater's ratings (held-out accuracy above the
majority class on each question), and on held-out prompts the rater's mean reward after
reward-weighted fine-tuning exceeds the base model's and the plain (uniform-weight) control's.

Each seed is the whole demo (tools/lift.py's stages, child processes) with its own tiny models,
videos, ratings, critic and fine-tuning; slow (minutes), run with the other slow tests.
"""

import json
import os

import pytest

from configs import demo
from lift_jax.lift import report, runner


def _read(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.slow
def test_critic_learns_the_ratings_and_reward_weighting_beats_base_and_plain(tmp_path):
  env = os.environ.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  try:
    results = {}
    for seed in (0, 1, 2):
      c = demo.get_config()
      c.seed = seed
      work = str(tmp_path / f"seed{seed}")
      runner.Run(c, work).run()
      rated = _read(os.path.join(work, "rater_eval", "summary.json"))["sets"]
      sft = _read(os.path.join(work, "critic_sft", "train_summary.json"))
      acc = sft["eval"]["logits"]["accuracy"]
      majority = report.majority_baseline(os.path.join(work, "critic_sft", "hra", "texts.json"))
      results[seed] = {
          "rater": {g: rated[g]["mean_reward"] for g in ("base", "reward-weighted", "plain")},
          "accuracy": acc, "majority": {d: 100 * m["share"] for d, m in majority.items()}}
      print(f"\nseed {seed}: {json.dumps(results[seed])}")
  finally:
    if env is not None:
      os.environ["XLA_FLAGS"] = env
  for seed, r in results.items():
    m = r["rater"]
    assert m["reward-weighted"] > m["base"], (seed, m)
    assert m["reward-weighted"] > m["plain"], (seed, m)
    for dim, share in r["majority"].items():
      assert r["accuracy"][dim] > share, (seed, dim, r["accuracy"], r["majority"])

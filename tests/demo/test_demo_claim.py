"""The demo's claim, for 3 seeds: the rater's ratings teach the critic (held-out accuracy above
the majority class on every question), and fine-tuning with the critic's rewards as weights
raises the rater's mean reward on held-out prompts above the base model's and above plain
fine-tuning's (same data, same steps, uniform weights).

Each seed runs README's demo command (`tools/lift.py --config=configs/demo.py`) once the demo's
models exist (made once for the session and shared, as the demo pins their seed:
tests/tools/demo_world.py); the three seeds run side by side. `pytest -q -s -m slow tests/demo`
prints each seed's figures (bench/RESULTS.md, the demo's world).
"""

import json
import os

import pytest

from lift_jax.demo import assets
from lift_jax.lift import report
from lift_jax.models.critic.prompts import QUESTIONS


SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_the_critic_learns_the_rater_and_reward_weighting_beats_base_and_plain(demo_runs, seed):
  demo_runs.start(*SEEDS)
  work, out = demo_runs.get(seed)
  assert out.returncode == 0, out.stdout[-3000:]
  assert os.path.isfile(work / "report.html")
  # The shared models were used, not made again (copies keep their times).
  manifest = lambda root: (root / assets.MANIFEST).stat().st_mtime_ns
  assert manifest(work / "assets") == manifest(demo_runs.assets)

  critic = json.loads((work / "critic_sft" / "train_summary.json").read_text())
  accuracy = critic["eval"]["logits"]["accuracy"]  # percent, 2 decimals
  majority = report.majority_baseline(str(work / "critic_sft" / "hra" / "texts.json"))
  for question in QUESTIONS:
    share = round(100 * majority[question]["share"], 2)
    assert accuracy[question] > share, (question, accuracy[question], majority[question])

  rated = json.loads((work / "rater_eval" / "summary.json").read_text())["sets"]
  base, weighted, plain = (rated[k]["mean_reward"] for k in ("base", "reward-weighted", "plain"))
  print(f"seed {seed}: critic {accuracy} vs majority "
        f"{ {q: round(100 * m['share'], 1) for q, m in majority.items()} }; rater's mean reward "
        f"base {base:.3f}, reward-weighted {weighted:.3f}, plain {plain:.3f}")
  assert weighted > base and weighted > plain

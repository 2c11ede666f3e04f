"""The demo's claim, for 3 seeds: the rater's ratings teach the critic (held-out accuracy above
the majority class on every question), and fine-tuning with the critic's rewards as weights
raises the rater's mean reward on held-out prompts above the base model's and above plain
fine-tuning's (same data, same steps, uniform weights).

Each seed runs README's demo command (`tools/lift.py --config=configs/demo.py`, ~3 minutes on 2
cores once the demo's models exist; they are made once for the session and shared, as the demo
pins their seed).
"""

import json
import os
import subprocess
import sys

import pytest

from lift_jax.demo import assets
from lift_jax.lift import report
from lift_jax.models.critic.prompts import QUESTIONS
from tests.tools import demo_world

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user runs it


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_critic_learns_the_rater_and_reward_weighting_beats_base_and_plain(
    tmp_path, demo_assets, seed):
  work = tmp_path / f"seed{seed}"
  demo_world.copy_into(demo_assets, work)
  made = (work / "assets" / assets.MANIFEST).stat().st_mtime_ns
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "lift.py"),
                        "--config=configs/demo.py", f"--workdir={work}", f"--config.seed={seed}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (work / "assets" / assets.MANIFEST).stat().st_mtime_ns == made  # the shared world
  assert os.path.isfile(work / "report.html")

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

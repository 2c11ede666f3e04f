#!/usr/bin/env python
"""Score generated videos with the LiFT-Critic (the `score` stage, `lift-jax score`); see
lift_jax/stages/score.py for the flags and outputs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.score import main  # noqa: E402

if __name__ == "__main__":
  main()

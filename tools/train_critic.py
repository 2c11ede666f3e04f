#!/usr/bin/env python
"""LiFT-Critic SFT (`lift-jax train-critic`); see lift_jax/stages/critic_train.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.critic_train import main  # noqa: E402

if __name__ == "__main__":
  main()

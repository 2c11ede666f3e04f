#!/usr/bin/env python
"""LiFT-Critic accuracy on LiFT-HRA (the `eval-critic` stage, `lift-jax eval-critic`); see
lift_jax/stages/critic_eval.py for the flags and outputs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.critic_eval import main, run, table  # noqa: E402,F401

if __name__ == "__main__":
  main()

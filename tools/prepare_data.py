#!/usr/bin/env python
"""Prepare the reward dataset (the `prepare` stage, `lift-jax prepare`); see
lift_jax/stages/prepare.py for the flags and outputs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.prepare import main  # noqa: E402

if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""Convert checkpoints (`lift-jax convert` / `lift-jax export`); see lift_jax/stages/convert.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.convert import main  # noqa: E402

if __name__ == "__main__":
  main()

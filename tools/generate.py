#!/usr/bin/env python
"""Generate videos with CogVideoX (the `generate` stage, `lift-jax generate`); see
lift_jax/stages/generate.py for the flags and outputs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.generate import main  # noqa: E402

if __name__ == "__main__":
  main()

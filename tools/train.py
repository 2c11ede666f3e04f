#!/usr/bin/env python
"""`lift-jax train` from a source checkout; see lift_jax/stages/train.py for the flags."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.train import main  # noqa: E402

if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""`lift-jax loop` from a source checkout; see lift_jax/stages/loop.py for the flags."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.loop import main  # noqa: E402

if __name__ == "__main__":
  main()

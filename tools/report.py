#!/usr/bin/env python
"""The run report (the `report` stage, `lift-jax report`); see
lift_jax/stages/report.py for the flags and outputs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.stages.report import main  # noqa: E402

if __name__ == "__main__":
  main()

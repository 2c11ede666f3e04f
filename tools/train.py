#!/usr/bin/env python
"""Reward-weighted fine-tuning of CogVideoX (LiFT).

  python tools/train.py --config=configs/lift_2b.py --workdir runs/lift_2b \
      --config.model.transformer=ckpt/cogvideox-2b/transformer --config.data.dir=work/prepared

Resumes from the newest checkpoint in WORKDIR/checkpoints; SIGTERM saves before exit. On a TPU pod
or a GPU cluster run the same command on every host (see tools/launch_tpu.sh).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lift_2b.py", "training config")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, summaries",
                               required=True)


def main(argv) -> None:
  del argv
  from lift_jax.lift import loop, memory

  cfg = _CONFIG.value
  for field, what in (("model.transformer", "the CogVideoX transformer (diffusers or converted)"),
                      ("data.dir", "the prepared data set (tools/prepare_data.py)")):
    node = cfg
    for part in field.split("."):
      node = node[part]
    if not node:
      raise app.UsageError(f"--config.{field} is required: {what}")
  try:
    summary = loop.run(cfg, _WORKDIR.value)
  except (memory.DoesNotFit, loop.TooManyBadSteps, ValueError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)

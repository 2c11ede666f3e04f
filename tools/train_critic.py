#!/usr/bin/env python
r"""LiFT-Critic SFT: LoRA on VILA's LLM with LiFT-HRA (lift_jax.lift.critic_train).

  python tools/train_critic.py --config=configs/critic_13b_sft.py --workdir runs/critic_13b \
      --config.critic.path=ckpt/VILA1.5-13b --config.data.dir=work/hra \
      --config.data.manual_dir=data/LiFT

Builds the HRA dataset from the release on first use (data.manual_dir -> data.dir), resumes from
the newest checkpoint in WORKDIR/checkpoints (SIGTERM saves first), and at the end writes the
adapter in PEFT's layout (WORKDIR/adapter: load it with `--lora` in tools/score.py or
tools/eval_critic.py, or with PEFT in PyTorch VILA), optionally the merged critic
(--config.export.merged=True -> WORKDIR/critic), and the test-split accuracy in
WORKDIR/train_summary.json. On several hosts run the same command on each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def define_flags() -> None:
  """Defined when run as a script only, so tests can import several tools into one process."""
  global _CONFIG, _WORKDIR, _PROGRESS
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/critic_13b_sft.py", "SFT config")
  _WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, adapter, "
                                 "summary", required=True)
  _PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def default_config(path: str = "configs/critic_13b_sft.py"):
  """The ConfigDict of a config file (relative paths from the repository root)."""
  path = path if os.path.isabs(path) else os.path.join(ROOT, path)
  spec = importlib.util.spec_from_file_location("critic_sft_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
  """The whole job; returns its summary (also in WORKDIR/train_summary.json)."""
  from lift_jax.lift import critic_train
  return critic_train.run(cfg, workdir, progress=progress)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lift_jax.checkpoint.safetensors import CheckpointError
  from lift_jax.lift import loop

  cfg = _CONFIG.value
  for field, what in (("critic.path", "the base VILA folder (e.g. VILA1.5-13b)"),
                      ("data.dir", "the HRA dataset (built there from data.manual_dir)")):
    node = cfg
    for part in field.split("."):
      node = node[part]
    if not node:
      raise app.UsageError(f"--config.{field} is required: {what}")
  try:
    summary = run(cfg, _WORKDIR.value, progress=_PROGRESS.value)
  except (CheckpointError, FileNotFoundError, ValueError, loop.TooManyBadSteps) as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)

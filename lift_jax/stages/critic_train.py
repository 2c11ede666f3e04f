r"""The critic SFT stage: LoRA on VILA's LLM with LiFT-HRA (`lift_jax.lift.critic_train`).

  lift-jax train-critic --config=configs/critic_13b_sft.py --workdir runs/critic_13b \
      --config.critic.path=ckpt/VILA1.5-13b --config.data.dir=work/hra \
      --config.data.manual_dir=data/LiFT

Builds the HRA dataset from the release on first use (data.manual_dir -> data.dir), resumes from
the newest checkpoint in WORKDIR/checkpoints (SIGTERM saves first), and at the end writes the
adapter in PEFT's layout (WORKDIR/adapter: load it with `--lora` in `lift-jax score` or
tools/eval_critic.py, or with PEFT in PyTorch VILA), optionally the merged critic
(--config.export.merged=True -> WORKDIR/critic), and the test-split accuracy in
WORKDIR/train_summary.json. On several hosts run the same command on each.
"""

from __future__ import annotations

import importlib.util
import os

from absl import app, flags

from lift_jax.lift import critic_train, loop
from lift_jax.stages import cli


def default_config(path: str = "configs/critic_13b_sft.py"):
  """The ConfigDict of a config file (a relative path from the source checkout's root)."""
  if not os.path.isabs(path) and not os.path.isfile(path):
    path = os.path.join(os.path.dirname(cli.SOURCE_CONFIGS), path)
  spec = importlib.util.spec_from_file_location("critic_sft_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def run(cfg, workdir: str, *, progress: bool = True) -> dict:
  """The whole job; returns its summary (also in WORKDIR/train_summary.json)."""
  return critic_train.run(cfg, workdir, progress=progress)


def define_flags() -> dict:
  return dict(
      config=cli.config_flag("configs/critic_13b_sft.py", "SFT config"),
      workdir=flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, adapter, "
                                  "summary", required=True),
      progress=flags.DEFINE_bool("progress", True, "show a progress bar"))


def stage(f: dict) -> dict:
  cfg = f["config"].value
  for field, what in (("critic.path", "the base VILA folder (e.g. VILA1.5-13b)"),
                      ("data.dir", "the HRA dataset (built there from data.manual_dir)")):
    node = cfg
    for part in field.split("."):
      node = node[part]
    if not node:
      raise app.UsageError(f"--config.{field} is required: {what}")
  return run(cfg, f["workdir"].value, progress=f["progress"].value)


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv, errors=(loop.TooManyBadSteps,))


if __name__ == "__main__":
  main()

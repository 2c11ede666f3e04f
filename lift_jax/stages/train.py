r"""The train stage: reward-weighted fine-tuning of CogVideoX (LiFT), `lift_jax.lift.loop.run`.

  lift-jax train --config=configs/lift_2b.py --workdir runs/lift_2b \
      --config.model.transformer=ckpt/cogvideox-2b/transformer --config.data.dir=work/prepared

Resumes from the newest checkpoint in WORKDIR/checkpoints; SIGTERM (on any host) saves the same
step on every host before exit. On a TPU pod or a GPU cluster run the same command on every host
(see tools/launch_tpu.sh): jax.distributed starts by itself there (lift_jax.parallel.distributed),
the final transformer is saved by all processes onto one shared WORKDIR/transformer.
"""

from __future__ import annotations

from absl import app, flags

from lift_jax.lift import loop, memory
from lift_jax.stages import cli


def _require(cfg, fields) -> None:
  for field, what in fields:
    node = cfg
    for part in field.split("."):
      node = node[part]
    if not node:
      raise app.UsageError(f"--config.{field} is required: {what}")


def define_flags() -> dict:
  return dict(
      config=cli.config_flag("configs/lift_2b.py", "training config"),
      workdir=flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, summaries",
                                  required=True))


def stage(f: dict) -> dict:
  cfg = f["config"].value
  _require(cfg, (("model.transformer", "the CogVideoX transformer (diffusers or converted)"),
                 ("data.dir", "the prepared data set (lift-jax prepare)")))
  return loop.run(cfg, f["workdir"].value)


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv, errors=(memory.DoesNotFit, loop.TooManyBadSteps))


if __name__ == "__main__":
  main()

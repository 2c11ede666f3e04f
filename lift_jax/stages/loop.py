"""The whole LiFT loop in one command: generate → score → prepare → train → evaluate → report.

  lift-jax loop --config=configs/demo.py --workdir /tmp/lift_demo
  lift-jax loop --config=configs/lift_2b_run.py --workdir runs/lift --stages=train,eval_tuned

Each stage writes under WORKDIR/<stage>/ and marks itself done; re-running the same command skips
finished stages and resumes an interrupted one. WORKDIR/report.html summarizes the run. On several
hosts run the same command on each: every stage runs as one multi-process job (see
lift_jax.lift.runner).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from lift_jax.lift import runner
from lift_jax.stages import cli


def define_flags() -> dict:
  return dict(
      config=cli.config_flag("configs/demo.py", "run config"),
      workdir=flags.DEFINE_string("workdir", None, "where every stage writes", required=True),
      stages=flags.DEFINE_list("stages", None, "subset of stages to run (default: all): "
                               + ", ".join(runner.STAGES)))


def stage(f: dict) -> dict:
  results = runner.Run(f["config"].value, f["workdir"].value,
                       config_file=config_flags.get_config_filename(flags.FLAGS["config"])
                       ).run(f["stages"].value)
  return results.get("report", {})


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv, errors=(runner.ConfigError,), distributed=False)


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""The whole LiFT loop in one command: generate → score → prepare → train → evaluate → report.

  python tools/lift.py --config=configs/demo.py --workdir /tmp/lift_demo
  python tools/lift.py --config=configs/lift_2b_run.py --workdir runs/lift --stages=train,eval_tuned

Each stage writes under WORKDIR/<stage>/ and marks itself done; re-running the same command skips
finished stages and resumes an interrupted one. WORKDIR/report.html summarizes the run.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "run config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where every stage writes", required=True)
_STAGES = flags.DEFINE_list("stages", None, "subset of stages to run (default: all): generate, "
                            "score, prepare, train, eval_base, eval_tuned, report")


def main(argv) -> None:
  del argv
  from lift_jax.lift import runner

  try:
    results = runner.Run(_CONFIG.value, _WORKDIR.value).run(_STAGES.value)
  except runner.ConfigError as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
  report = results.get("report", {})
  print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
  app.run(main)

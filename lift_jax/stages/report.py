r"""The report stage: one HTML page comparing the base and the fine-tuned generator (rewards, labels
per question, a frame strip of the same prompts and seeds, the training loss) from the loop's
files (`lift_jax.lift.report`).

  lift-jax report --workdir runs/lift                  # a loop work dir -> WORKDIR/report.html
  lift-jax report --out report.html --scores_before base/scores.jsonl \
      --scores_after tuned/scores.jsonl [--manifest_before ... --manifest_after ...] \
      [--train_history train/train_history.jsonl] [--run_config config.json]

With --workdir the inputs default to the loop's layout (eval_base/, eval_tuned/, the last
roundN/train/, config.json); any file flag overrides one. The loop writes the same page as its last
stage (with the extra sections its config asks for); this command rebuilds it, or builds one from
files made by the stages run alone. Paths may be local or `gs://` (see lift_jax.files).
"""

from __future__ import annotations

import json
import re

from absl import flags

from lift_jax import files
from lift_jax.lift import report
from lift_jax.stages import cli

FILES = ("scores_before", "scores_after", "manifest_before", "manifest_after", "train_history")


def workdir_inputs(workdir: str) -> dict[str, str]:
  """The report's inputs in a loop work dir (lift_jax.lift.runner's layout)."""
  rounds = sorted((int(m.group(1)) for name in (files.listdir(workdir) if files.isdir(workdir)
                                                else [])
                   if (m := re.fullmatch(r"round(\d+)", name))), reverse=True)
  last = rounds[0] if rounds else 1
  return {"scores_before": files.join(workdir, "eval_base", "score", "scores.jsonl"),
          "scores_after": files.join(workdir, "eval_tuned", "score", "scores.jsonl"),
          "manifest_before": files.join(workdir, "eval_base", "generate", "manifest.jsonl"),
          "manifest_after": files.join(workdir, "eval_tuned", "generate", "manifest.jsonl"),
          "train_history": files.join(workdir, f"round{last}", "train", "train_history.jsonl"),
          "run_config": files.join(workdir, "config.json"),
          "out": files.join(workdir, "report.html")}


def run(out: str | None = None, *, workdir: str | None = None, run_config: str | None = None,
        title: str = "LiFT run report", **paths: str | None) -> dict:
  """Writes the page; returns {"report": path, "inputs": {...found...}, "missing": [...]}."""
  unknown = set(paths) - set(FILES)
  if unknown:
    raise TypeError(f"unknown report inputs {sorted(unknown)} (expected {FILES})")
  inputs = workdir_inputs(workdir) if workdir else {}
  inputs.update({k: v for k, v in paths.items() if v})
  if run_config:
    inputs["run_config"] = run_config
  out = out or inputs.get("out")
  if not out:
    raise ValueError("pass --out (the HTML file to write) or --workdir (a loop work dir)")
  if not any(files.isfile(inputs[k]) for k in ("scores_before", "scores_after") if inputs.get(k)):
    raise FileNotFoundError("no scores to report: neither --scores_before nor --scores_after "
                            f"exists ({inputs.get('scores_before')}, {inputs.get('scores_after')})")
  config_path = inputs.get("run_config")
  config = json.loads(files.read_text(config_path)) if config_path and files.isfile(
      config_path) else {}
  page = report.write_report(out, config=config, title=title,
                             **{k: inputs.get(k) for k in FILES})
  found = {k: v for k, v in inputs.items() if k != "out" and v and files.isfile(v)}
  return {"report": page, "inputs": found,
          "missing": sorted(k for k, v in inputs.items() if k != "out" and k not in found)}


def define_flags() -> dict:
  holders = dict(
      out=flags.DEFINE_string("out", None, "the HTML file to write (default: "
                              "WORKDIR/report.html)"),
      workdir=flags.DEFINE_string("workdir", None, "a loop work dir: the inputs default to its "
                                  "layout"),
      run_config=flags.DEFINE_string("run_config", None, "the run's config as JSON (printed on "
                                     "the page; default: WORKDIR/config.json)"),
      title=flags.DEFINE_string("title", "LiFT run report", "the page's title"))
  for name in FILES:
    holders[name] = flags.DEFINE_string(name, None, f"{name.replace('_', ' ')} file")
  return holders


def stage(f: dict) -> dict:
  return run(f["out"].value, workdir=f["workdir"].value, run_config=f["run_config"].value,
             title=f["title"].value, **{k: f[k].value for k in FILES})


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv, distributed=False)


if __name__ == "__main__":
  main()

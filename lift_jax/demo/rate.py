"""The demo's annotation stage: the rater (`demo.rater`) grades generated videos.

  python -m lift_jax.demo.rate --manifest train=RUN/round1/generate/manifest.jsonl --out DIR --hra
  python -m lift_jax.demo.rate --rater DIR/rater.json --out EVAL \
      --manifest base=M1 --manifest tuned=M2 --manifest plain=M3

Without `--rater` the rater is calibrated on the first manifest's videos and saved as
DIR/rater.json. Per manifest NAME it writes DIR/NAME/scores.jsonl, one row per video in
`tools/score.py`'s layout (labels, scores, reward, answers "<Label>. <reason>") with
`"mode": "rater"`, so the report reads the rater's and the critic's scores alike. `--hra` also
writes the ratings as a LiFT-HRA release (DIR/LiFT-HRA/LiFT-HRA-data.json with the videos copied
beside it): LLaVA conversations, one per (video, question), with the critic's real questions, which
`tools/train_critic.py --config.data.manual_dir=DIR` trains the critic on. DIR/summary.json holds
the mean reward and the label counts per manifest.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
from typing import Sequence

from lift_jax.data import records
from lift_jax.data import video as video_lib
from lift_jax.demo.rater import Rater
from lift_jax.models.critic.prompts import QUESTIONS

HRA_DIR = "LiFT-HRA"
HRA_JSON = "LiFT-HRA-data.json"


def read_manifest(path: str) -> list[dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"manifest {path}: does not exist (run the generate stage first)")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def video_path(manifest: str, row: dict) -> str:
  return row["path"] if os.path.isabs(row["path"]) else os.path.join(
      os.path.dirname(os.path.abspath(manifest)), row["path"])


def hra_entry(video: str, caption: str, dimension: str, label: str, reason: str) -> dict:
  """One LiFT-HRA rating: the human turn `<video>\\n {caption}{question}`, the gpt turn
  `<Label>. <reason>` (the released layout, see `data.hra`)."""
  human = f"<video>\n {caption}{QUESTIONS[dimension]}"
  return {"video": video, "conversations": [{"from": "human", "value": human},
                                            {"from": "gpt", "value": f"{label}. {reason}"}]}


def rate_manifest(rater: Rater, manifest: str, out_dir: str) -> tuple[list[dict], dict]:
  """Rates every video of `manifest`; writes out_dir/scores.jsonl; returns (rows, summary)."""
  os.makedirs(out_dir, exist_ok=True)
  rows, counts = [], collections.defaultdict(collections.Counter)
  for row in read_manifest(manifest):
    path = video_path(manifest, row)
    rated = rater.rate(video_lib.read_video(path), row["prompt"])
    labels = {d: lab for d, (lab, _) in rated.items()}
    for d, lab in labels.items():
      counts[d][lab] += 1
    rows.append({"path": os.path.relpath(path, out_dir), "prompt": row["prompt"],
                 "seed": row.get("seed"), "mode": "rater", "labels": labels,
                 "scores": {d: records.LABEL_SCORES[lab.lower()] for d, lab in labels.items()},
                 "reward": records.reward_from_labels(labels, where=path),
                 "answers": {d: f"{lab}. {why}" for d, (lab, why) in rated.items()},
                 "measures": rater.measures(video_lib.read_video(path))})
  tmp = os.path.join(out_dir, "scores.jsonl.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, os.path.join(out_dir, "scores.jsonl"))
  mean = sum(r["reward"] for r in rows) / len(rows) if rows else None
  return rows, {"videos": len(rows), "mean_reward": mean,
                "labels": {d: dict(c) for d, c in counts.items()}}


def write_hra(rows: list[dict], scores_dir: str, out_dir: str) -> str:
  """The ratings (`rate_manifest`'s rows, paths relative to `scores_dir`) as a LiFT-HRA release
  under out_dir/LiFT-HRA; returns the JSON's path."""
  root = os.path.join(out_dir, HRA_DIR)
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  entries = []
  for i, row in enumerate(rows):
    rel = f"videos/{i:05d}.mp4"
    shutil.copyfile(os.path.join(scores_dir, row["path"]), os.path.join(root, rel))
    for dim, answer in row["answers"].items():
      label, _, reason = answer.partition(". ")
      entries.append(hra_entry(rel, row["prompt"], dim, label, reason))
  path = os.path.join(root, HRA_JSON)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(entries, f, indent=1)
  os.replace(path + ".tmp", path)
  return path


def run(manifests: Sequence[tuple[str, str]], out: str, *, rater_path: str | None = None,
        hra: bool = False) -> dict:
  """Rates each (name, manifest) into out/name/; see the module doc."""
  if not manifests:
    raise ValueError("no --manifest NAME=PATH given")
  os.makedirs(out, exist_ok=True)
  if rater_path:
    rater = Rater.load(rater_path)
  else:
    name, manifest = manifests[0]
    rows = read_manifest(manifest)
    rater = Rater.calibrate([video_lib.read_video(video_path(manifest, r)) for r in rows],
                            [r["prompt"] for r in rows])
    rater_path = os.path.join(out, "rater.json")
    rater.save(rater_path)
  summary = {"rater": os.path.abspath(rater_path), "thresholds": rater.to_json()["thresholds"],
             "sets": {}}
  for name, manifest in manifests:
    rows, summary["sets"][name] = rate_manifest(rater, manifest, os.path.join(out, name))
    if hra and name == manifests[0][0]:
      summary["hra"] = write_hra(rows, os.path.join(out, name), out)
  with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m lift_jax.demo.rate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--manifest", action="append", default=[], metavar="NAME=PATH",
                 help="a generate manifest to rate, named (repeatable)")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--rater", help="rater.json to grade with (default: calibrate on the first)")
  p.add_argument("--hra", action="store_true", help="also write the first set as LiFT-HRA")
  args = p.parse_args(argv)
  pairs = []
  for item in args.manifest:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      p.error(f"--manifest {item!r}: expected NAME=PATH")
    pairs.append((name, path))
  try:
    summary = run(pairs, args.out, rater_path=args.rater, hra=args.hra)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

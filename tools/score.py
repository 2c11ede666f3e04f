#!/usr/bin/env python
r"""Score generated videos with the LiFT-Critic: manifest.jsonl -> scores.jsonl.

  python tools/score.py --config=configs/critic_13b.py --manifest work/videos/manifest.jsonl \
      --out work/scores.jsonl --critic ckpt/VILA1.5-13b --lora ckpt/LiFT-Critic-13b-lora-v1.5 \
      [--mode generate|logits] [--config.batch_videos=8] [--config.sampling.max_new_tokens=64]

Each manifest row ({"prompt", "seed", "path", ...}) gives one scores.jsonl row: path, prompt,
labels / scores per dimension, reward (Good 0.9 / Normal 0.2 / Bad 0.05, weighted mean), mode, and
the answers and reasons (generate) or label probabilities (logits).

Rows are appended and flushed a batch at a time, so a killed run started again with the same
command scores only what is left (--overwrite starts over). Videos that cannot be decoded are
skipped, counted and named in the summary; videos with an answer no label can be read from go to
<out stem>.unparsed.jsonl (config reward.unparseable=bad scores them as Bad instead). The summary
(counts, mean reward, label counts per dimension) is printed and written to <out stem>.summary.json.

LiFT's own files: --manifest may be LiFT's test.json (videos under --video_root), and the answers
are also written in LiFT's critic-output layout beside --out (config lift_output, e.g.
critic_output_13b.json), for LiFT's process_reward_score.py. The stage itself is
`lift_jax.stages.score`.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lift_jax.checkpoint.safetensors import CheckpointError  # noqa: E402
from lift_jax.stages.score import run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/critic_13b.py", "critic config file")
_MANIFEST = flags.DEFINE_string("manifest", None, "generate's manifest.jsonl, or LiFT's test.json "
                                 "(a JSON list of {video_id, video, caption})", required=True)
_VIDEO_ROOT = flags.DEFINE_string("video_root", None, "folder LiFT's test.json videos are under "
                                  "(its --image_root; default: the JSON's folder)")
_OUT = flags.DEFINE_string("out", None, "scores.jsonl to write (or resume)", required=True)
_CRITIC = flags.DEFINE_string("critic", None, "VILA folder or converted critic "
                              "(default: config.critic.path)")
_LORA = flags.DEFINE_string("lora", None, "PEFT LoRA adapter folder (default: config.critic.lora)")
_MODE = flags.DEFINE_enum("mode", None, ["generate", "logits"], "default: config.mode")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "start over instead of resuming --out")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = run(_CONFIG.value, _MANIFEST.value, _OUT.value, critic_path=_CRITIC.value,
                  lora=_LORA.value, mode=_MODE.value, overwrite=_OVERWRITE.value,
                  progress=_PROGRESS.value, video_root=_VIDEO_ROOT.value)
  except (CheckpointError, FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
  brief = {k: v for k, v in summary.items() if k != "this_run"}
  print(json.dumps(brief, indent=2, ensure_ascii=False))
  if summary["unparseable_videos"] or summary["unreadable"]:
    print(f"note: {summary['unreadable']} unreadable video(s) (listed in "
          f"{summary['summary_file']}), {summary['unparseable_videos']} with unparseable answers "
          f"(in {summary['unparsed_file']})", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)

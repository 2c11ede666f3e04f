"""LiFT's own files, so a user of the official PyTorch code can bring and take them:

  test.json               [{"video_id", "video", "caption"}]  what `run_critic_{13b,40b}.py` reads;
                          "video" is relative to a video root (its `--image_root`)
  critic_output_13b.json  the same items, each with the critic's answer per dimension
                          ({"semantic consistency": "Good. ...", ...}): what those scripts write
  data.json               [{"video", "caption", "score"}]  the fine-tuning list its trainer reads
                          (`CogVideo/finetune/train.py`; real videos carry their weight as score)

All three are plain JSON lists. The published `CogVideo/dataset/data.json` is a template with
placeholders and a trailing comma; reading it gives an error that says so.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from lift_jax import files
from lift_jax.data.records import RewardRecord, resolve
from lift_jax.models.critic.vocabulary import QUESTION_KEYS

CRITIC_OUTPUT_13B = "critic_output_13b.json"


def read_list(path: str, what: str) -> list[dict[str, Any]]:
  """A JSON list of objects; errors name the file and the entry."""
  try:
    text = files.read_text(path)
  except OSError as err:
    raise ValueError(f"{path}: cannot read {what} ({err})") from err
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    hint = ""
    if "reward_score" in text or "/path/to/video" in text:
      hint = (" It looks like LiFT's published template (placeholders and a trailing comma): "
              "fill it with real entries, e.g. {\"video\": \"videos/0.mp4\", \"caption\": "
              "\"...\", \"score\": 0.62}, as plain JSON.")
    raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).{hint}") from err
  if not isinstance(data, list):
    raise ValueError(f"{path}: {what} must be a JSON list, got {type(data).__name__}")
  for i, row in enumerate(data):
    if not isinstance(row, dict):
      raise ValueError(f"{path}[{i}]: expected an object, got {type(row).__name__}")
  return data


def _text(row: dict, key: str, where: str) -> str:
  value = row.get(key)
  if not isinstance(value, str) or not value:
    raise ValueError(f"{where}: field {key!r} must be a non-empty string (has {sorted(row)})")
  return value


def _video_caption(row: dict, where: str) -> tuple[str, str]:
  video = _text(row, "video", where)
  caption = row.get("caption")
  if not isinstance(caption, str):
    raise ValueError(f"{where}: missing field 'caption' (has {sorted(row)})")
  return video, caption


def read_critic_inputs(path: str, video_root: str | None = None) -> list[dict[str, Any]]:
  """LiFT's test.json -> rows {"row", "resolved", "caption"} (the score stage's input rows);
  "video" resolves against `video_root` (default: the file's folder)."""
  root = files.absolute(video_root) if video_root else files.parent(path)
  rows, seen = [], set()
  for i, row in enumerate(read_list(path, "LiFT's critic input list (test.json)")):
    video, caption = _video_caption(row, f"{path}[{i}]")
    resolved = files.resolve(video, root)
    if resolved in seen:
      raise ValueError(f"{path}[{i}]: video {resolved} is listed twice")
    seen.add(resolved)
    rows.append({"row": row, "resolved": resolved, "caption": caption})
  return rows


def critic_output_item(row: dict, answers: dict[str, str]) -> dict[str, Any]:
  """One critic-output entry: the input item (video_id, video, caption) and an answer per
  dimension, in LiFT's key order."""
  item = {"video_id": row.get("video_id", os.path.basename(row["video"])),
          "video": row["video"], "caption": row["caption"]}
  item.update({dim: answers[dim] for dim in QUESTION_KEYS if dim in answers})
  return item


def read_critic_output(path: str) -> list[dict[str, Any]]:
  """LiFT's critic_output_*.json; each entry must hold an answer for every dimension."""
  items = read_list(path, "LiFT's critic output")
  for i, item in enumerate(items):
    for key in ("video", "caption") + QUESTION_KEYS:
      _text(item, key, f"{path}[{i}]")
  return items


def write_json_list(path: str, items: Iterable[dict[str, Any]]) -> str:
  """A JSON list (indented as LiFT's scripts write them), atomically."""
  files.write_text(path, json.dumps(list(items), indent=4, ensure_ascii=False) + "\n")
  return path


def read_data_json(path: str, video_root: str | None = None) -> list[RewardRecord]:
  """LiFT's fine-tuning list -> reward records (every row weighs its score, real ones too: LiFT
  has no real/synthetic flag). "video" resolves against `video_root` (default: the file's folder)."""
  out = []
  for i, row in enumerate(read_list(path, "LiFT's fine-tuning list (data.json)")):
    where = f"{path}[{i}]"
    video, caption = _video_caption(row, where)
    try:
      score = float(row.get("score"))
    except (TypeError, ValueError):
      raise ValueError(f"{where}: field 'score' must be a number, got {row.get('score')!r}") \
          from None
    base = files.join(files.absolute(video_root), "x") if video_root else path
    out.append(RewardRecord(resolve(video, base), caption, score, False, score >= 0.9 - 1e-6))
  return out


def write_data_json(path: str, records: Sequence[RewardRecord]) -> str:
  """Reward records as LiFT's data.json (absolute video paths, score = the record's weight)."""
  return write_json_list(path, ({"video": r.path, "caption": r.caption, "score": r.reward}
                                for r in records))

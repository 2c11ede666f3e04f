"""The reward dataset as records: generate's manifest joined with score's rewards, plus real videos.

Inputs (JSON Lines, one object a line):
  manifest.jsonl  (generate)  {"prompt", "seed", "path", ...}            one per generated video
  scores.jsonl    (score)     {"path", "labels": {dim: label}, "reward", ...}
  real.jsonl      (optional)  {"path", "caption"}                          real videos, weight λ

A relative "path" is relative to the folder of the JSONL file that holds it, so a work directory
can be moved. The join key is the resolved, normalised path. Synthetic records weigh their reward;
real ones carry reward = λ (`real_weight`, 1 in the paper) and `is_real`, so the loss can treat them
apart (`lift_jax.lift.sample_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Iterable, Sequence

from lift_jax import files

from lift_jax.models.critic.vocabulary import parse_label

log = logging.getLogger(__name__)

# Paper Eq. 2: per-dimension label -> score; the reward is the mean over dimensions.
LABEL_SCORES = {"good": 0.9, "normal": 0.2, "bad": 0.05}


@dataclasses.dataclass(frozen=True)
class RewardRecord:
  """One training video: where it is, what it shows, and how much its loss counts."""
  path: str
  caption: str
  reward: float
  is_real: bool = False
  all_good: bool = False

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class JoinResult:
  """The joined records, and what could not be joined (named, so a log can list them)."""
  records: list[RewardRecord]
  unscored: list[str] = dataclasses.field(default_factory=list)   # in the manifest, no score
  unknown: list[str] = dataclasses.field(default_factory=list)    # scored, not in the manifest

  @property
  def num_synthetic(self) -> int:
    return sum(not r.is_real for r in self.records)

  @property
  def num_real(self) -> int:
    return sum(r.is_real for r in self.records)


def read_jsonl(path: str | None, *, missing_ok: bool = False) -> list[dict[str, Any]]:
  """The objects of a JSON Lines file (blank lines skipped); errors name the file and line. With
  `missing_ok`, [] for a file (or path) that is not there yet."""
  if missing_ok and (not path or not files.isfile(path)):
    return []
  out = []
  with files.open_file(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from err
      if not isinstance(obj, dict):
        raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
      out.append(obj)
  return out


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> str:
  """Writes JSON Lines atomically (temporary name, then rename), on every process that calls it
  (a per-process shard is each process's own)."""
  with files.atomic_file(path, own=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return path


def resolve(path: str, jsonl_path: str) -> str:
  """A record's path as an absolute, normalised path or URI (relative ones against the JSONL's
  folder)."""
  return files.resolve(path, files.parent(jsonl_path))


def _field(row: dict, keys: Sequence[str], where: str, kind: type | tuple = str):
  for k in keys:
    if k in row:
      value = row[k]
      if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {k!r} must be {getattr(kind, '__name__', kind)}, "
                         f"got {value!r}")
      return value
  raise ValueError(f"{where}: missing field {' or '.join(map(repr, keys))} (has {sorted(row)})")


def _label_good(label: Any) -> bool:
  return parse_label(str(label)) == "Good"


def reward_from_labels(labels: dict[str, Any], where: str = "labels") -> float:
  """Mean of Good 0.9 / Normal 0.2 / Bad 0.05 over the dimensions (paper Eq. 2)."""
  scores = []
  for dim, label in labels.items():
    word = (parse_label(str(label)) or "").lower()
    if word not in LABEL_SCORES:
      raise ValueError(f"{where}: label {label!r} for {dim!r} is not one of Good/Normal/Bad")
    scores.append(LABEL_SCORES[word])
  if not scores:
    raise ValueError(f"{where}: no labels to make a reward from")
  return sum(scores) / len(scores)


def join_records(manifest: str, scores: str, real: str | None = None, *,
                 real_weight: float = 1.0) -> JoinResult:
  """Joins generate's manifest with score's rewards (by resolved path) and appends real videos.

  A manifest video without a score is left out and listed in `unscored` (the score stage may have
  skipped it); a score without a manifest entry is listed in `unknown`. Duplicate paths are an
  error. `all_good` is "every label is Good" (the rejection-sampling ablation's filter), or
  reward >= 0.9 when the score row has no labels.
  """
  by_path: dict[str, dict] = {}
  order: list[str] = []
  for n, row in enumerate(read_jsonl(manifest), 1):
    where = f"{manifest}:{n}"
    path = resolve(_field(row, ("path",), where), manifest)
    if path in by_path:
      raise ValueError(f"{where}: video {path} is listed twice in the manifest")
    by_path[path] = {"caption": _field(row, ("prompt", "caption"), where)}
    order.append(path)

  scored: dict[str, tuple[float, bool]] = {}
  unknown = []
  for n, row in enumerate(read_jsonl(scores), 1):
    where = f"{scores}:{n}"
    path = resolve(_field(row, ("path",), where), scores)
    if path in scored:
      raise ValueError(f"{where}: video {path} is scored twice")
    labels = row.get("labels")
    if labels is not None and not isinstance(labels, dict):
      raise ValueError(f"{where}: field 'labels' must be an object {{dimension: label}}")
    if "reward" in row:
      reward = _field(row, ("reward",), where, (int, float))
    elif labels:
      reward = reward_from_labels(labels, where)
    else:
      raise ValueError(f"{where}: no 'reward' and no 'labels'")
    all_good = all(map(_label_good, labels.values())) if labels else reward >= 0.9 - 1e-6
    scored[path] = (float(reward), bool(all_good))
    if path not in by_path:
      unknown.append(path)

  records, unscored = [], []
  for path in order:
    if path not in scored:
      unscored.append(path)
      continue
    reward, all_good = scored[path]
    records.append(RewardRecord(path, by_path[path]["caption"], reward, False, all_good))

  if real:
    seen = set()
    for n, row in enumerate(read_jsonl(real), 1):
      where = f"{real}:{n}"
      path = resolve(_field(row, ("path", "video"), where), real)
      if path in seen:
        raise ValueError(f"{where}: real video {path} is listed twice")
      seen.add(path)
      caption = _field(row, ("caption", "prompt"), where)
      records.append(RewardRecord(path, caption, float(real_weight), True, True))

  if unscored:
    log.warning("%d video(s) in %s have no score in %s and are left out, e.g. %s",
                len(unscored), manifest, scores, unscored[0])
  if unknown:
    log.warning("%d score(s) in %s match no video in %s, e.g. %s", len(unknown), scores,
                manifest, unknown[0])
  return JoinResult(records, unscored, unknown)


def write_records(path: str, records: Iterable[RewardRecord]) -> str:
  """The joined reward dataset as JSON Lines (absolute paths), atomically."""
  return write_jsonl(path, (r.to_json() for r in records))


def read_records(path: str) -> list[RewardRecord]:
  """Reads what `write_records` wrote."""
  out = []
  for n, row in enumerate(read_jsonl(path), 1):
    where = f"{path}:{n}"
    out.append(RewardRecord(
        resolve(_field(row, ("path",), where), path), _field(row, ("caption",), where),
        float(_field(row, ("reward",), where, (int, float))),
        bool(row.get("is_real", False)), bool(row.get("all_good", False))))
  return out

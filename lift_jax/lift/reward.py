"""Critic answers -> labels -> one scalar reward per video (LiFT, arXiv 2412.04814 Eq. 2).

The critic answers each of its three questions with `"<Label>. <reason>"`; the label maps to a
per-dimension score (Good 0.9 / Normal 0.2 / Bad 0.05) and the reward is their weighted mean
(equal weights in the paper: the mean of three).

The label is read from each answer by one of the critic vocabulary's rules
(`models.critic.vocabulary.PARSE_RULES`): "lift" (the paper configs' default) is LiFT's
`process_reward_score.get_score`, which never fails (garbage becomes Good); "start" is the strict
reading, which returns None for an answer that does not begin with a label, so the caller counts
it and the video is not given a made-up score. `LabelStats` counts the answers the strict
reading rejects under either rule.

The score map's numbers live in `lift_jax.data.records.LABEL_SCORES` (the data package imports
nothing from `lift`); they are read from there, so the two stages cannot disagree.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Mapping

from lift_jax.data import records as _records
from lift_jax.models.critic.vocabulary import (LABELS, PARSE_RULES, parse_label,  # noqa: F401
                                               split_answer, strictly_readable)
from lift_jax.models.critic.vocabulary import QUESTION_KEYS as DIMENSIONS

# Paper Eq. 2, one source of truth shared with `records.reward_from_labels`.
REWARD_MAP: dict[str, float] = {label: _records.LABEL_SCORES[label.lower()] for label in LABELS}
# Short names configs use for the three dimensions (ConfigDict keys cannot hold spaces on the
# command line).
SHORT_NAMES: dict[str, str] = {"semantic": "semantic consistency", "fidelity": "fidelity issues",
                               "motion": "motion issues"}
# What to do with a video one of whose answers has no label: leave it out of scores.jsonl (listed
# beside it), or score that dimension as Bad (the most conservative reading).
UNPARSEABLE_POLICIES = ("skip", "bad")


class MissingLabelError(ValueError):
  """A dimension has no (or no valid) label, so no reward can be computed."""

  def __init__(self, missing: Iterable[str], where: str = "labels"):
    self.missing = tuple(missing)
    super().__init__(f"{where}: no valid label for {', '.join(map(repr, self.missing))} "
                     f"(expected one of {'/'.join(LABELS)})")


def canonical_label(label: Any) -> str | None:
  """"good", " Good. ", "BAD" -> the canonical spelling; None for anything else."""
  if not isinstance(label, str):
    return None
  got, _ = split_answer(label)
  return got


def resolve_weights(weights: Mapping[str, float] | None,
                    dimensions: Iterable[str] = DIMENSIONS) -> dict[str, float]:
  """Per-dimension weights keyed by the full dimension name (short names accepted); default 1."""
  dims = tuple(dimensions)
  out = {d: 1.0 for d in dims}
  for key, value in (weights or {}).items():
    dim = SHORT_NAMES.get(key, key)
    if dim not in out:
      raise ValueError(f"reward weight for unknown dimension {key!r}; known: {list(dims)} "
                       f"(or {list(SHORT_NAMES)})")
    if float(value) < 0:
      raise ValueError(f"reward weight for {dim!r} must be >= 0, got {value}")
    out[dim] = float(value)
  if sum(out.values()) <= 0:
    raise ValueError(f"reward weights sum to zero: {out}")
  return out


def reward(labels: Mapping[str, Any], *, label_scores: Mapping[str, float] | None = None,
           weights: Mapping[str, float] | None = None, round_digits: int | None = None,
           where: str = "labels") -> float:
  """Weighted mean of the per-dimension scores (paper Eq. 2: equal weights, the mean of three).

  Every dimension with a non-zero weight needs a label (a missing, None or unknown one raises
  `MissingLabelError` naming it). `weights=None` weighs the dimensions present in `labels`
  equally. LiFT's script rounds to 2 digits (`round_digits=2`); by default the mean is exact.
  """
  scores = dict(REWARD_MAP if label_scores is None else label_scores)
  if not labels:
    raise MissingLabelError(DIMENSIONS if weights is not None else ["(no dimensions)"], where)
  w = resolve_weights(weights, labels.keys() if weights is None else DIMENSIONS)
  missing, total = [], 0.0
  for dim, wd in w.items():
    label = canonical_label(labels.get(dim))
    if label is None or label not in scores:
      if wd > 0:
        missing.append(dim)
      continue
    total += wd * float(scores[label])
  if missing:
    raise MissingLabelError(missing, where)
  value = total / sum(w.values())
  return round(value, round_digits) if round_digits is not None else value


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """The reward settings of a config's `reward` block (see configs/critic_13b.py)."""

  label_scores: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(REWARD_MAP))
  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)  # {} = equal
  parse_rule: str = "start"
  unparseable: str = "skip"
  round_digits: int | None = None
  min_label_mass: float = 0.5  # logits mode: below this P(Good)+P(Normal)+P(Bad), no label

  def __post_init__(self):
    if set(self.label_scores) != set(LABELS):
      raise ValueError(f"reward label_scores must map exactly {list(LABELS)}, got "
                       f"{sorted(self.label_scores)}")
    if self.parse_rule not in PARSE_RULES:
      raise ValueError(f"reward parse_rule must be one of {PARSE_RULES}, got {self.parse_rule!r}")
    if self.unparseable not in UNPARSEABLE_POLICIES:
      raise ValueError(f"reward unparseable must be one of {UNPARSEABLE_POLICIES}, got "
                       f"{self.unparseable!r}")
    resolve_weights(self.weights)

  @classmethod
  def from_config(cls, cfg: Any | None) -> "RewardConfig":
    """From a ConfigDict / dict with any of the fields (None: the paper's defaults)."""
    if cfg is None:
      return cls()
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown reward setting(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: v for k, v in d.items() if v is not None or k == "round_digits"})

  @property
  def dimension_weights(self) -> dict[str, float]:
    return resolve_weights(self.weights)

  def score(self, label: str | None) -> float | None:
    return None if label is None else float(self.label_scores[label])

  def reward(self, labels: Mapping[str, Any], where: str = "labels") -> float:
    return reward(labels, label_scores=self.label_scores, weights=self.dimension_weights,
                  round_digits=self.round_digits, where=where)

  def expected_score(self, probs: Mapping[str, float]) -> float:
    """Σ_l p(l)·s(l) with p renormalised over the three labels (logits mode's soft score)."""
    mass = sum(float(probs[label]) for label in LABELS)
    if mass <= 0:
      return float("nan")
    return sum(float(probs[label]) * float(self.label_scores[label]) for label in LABELS) / mass


def critic_output_rewards(items: Iterable[Mapping[str, Any]], config: "RewardConfig | None" = None,
                          stats: "LabelStats | None" = None) -> list[float]:
  """One reward per entry of LiFT's critic output (an answer text per dimension), read as
  LiFT's `process_reward_score.py` reads it by default (rule "lift", rounded to 2 digits)."""
  config = config or RewardConfig(parse_rule="lift", round_digits=2)
  out = []
  for i, item in enumerate(items):
    where = str(item.get("video", f"entry {i}"))
    labels = {}
    for dim in config.dimension_weights:
      answer = item.get(dim)
      labels[dim] = parse_label(answer, config.parse_rule) if isinstance(answer, str) else None
      if stats is not None:
        stats.add(dim, labels[dim], answer if isinstance(answer, str) else None, where)
    out.append(config.reward(labels, where=where))
  return out


@dataclasses.dataclass
class LabelStats:
  """Counts of parsed labels per dimension, and the answers no label could be read from."""

  labels: dict[str, collections.Counter] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(collections.Counter))
  unparseable: dict[str, int] = dataclasses.field(default_factory=collections.Counter)
  examples: list[dict[str, str]] = dataclasses.field(default_factory=list)
  max_examples: int = 20

  def add(self, dim: str, label: str | None, answer: str | None = None, path: str = "") -> None:
    """Records one answer; `label` None (or a "lift"-rule default) counts as unparseable."""
    if label is not None:
      self.labels[dim][label] += 1
    if label is None or (answer is not None and not strictly_readable(answer)):
      self.unparseable[dim] += 1
      if len(self.examples) < self.max_examples:
        self.examples.append({"path": path, "dimension": dim, "answer": (answer or "")[:200]})

  @property
  def num_unparseable(self) -> int:
    return sum(self.unparseable.values())

  def to_json(self) -> dict[str, Any]:
    return {"label_counts": {d: {label: int(c.get(label, 0)) for label in LABELS}
                             for d, c in self.labels.items()},
            "unparseable_answers": self.num_unparseable,
            "unparseable_by_dimension": dict(self.unparseable),
            "unparseable_examples": list(self.examples)}

"""LiFT-Critic evaluation: label accuracy per dimension and their mean (the paper's Table 2), by
`Critic.label_probs` argmax ("logits") or by the label at the start of a greedy answer
("generate").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from lift_jax.data.hra import text
from lift_jax.models.critic.vocabulary import DIMENSIONS, LABELS, QUESTION_KEYS, parse_label

SCORING_MODES = ("logits", "generate")


@dataclasses.dataclass
class EvalResult:
  """Label accuracy per dimension and their mean (the paper's Table 2), one scoring mode."""

  mode: str
  correct: dict[str, int]
  total: dict[str, int]
  unparseable: int = 0
  predictions: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  @property
  def accuracy(self) -> dict[str, float]:
    return {d: self.correct[d] / self.total[d] for d in self.total if self.total[d]}

  @property
  def average(self) -> float:
    acc = self.accuracy
    return float(np.mean(list(acc.values()))) if acc else float("nan")

  @property
  def overall(self) -> float:
    n = sum(self.total.values())
    return sum(self.correct.values()) / n if n else float("nan")

  def to_json(self, with_predictions: bool = False) -> dict[str, Any]:
    out = {"mode": self.mode,
           "accuracy": {d: round(100 * a, 2) for d, a in self.accuracy.items()},
           "paper_names": {d: DIMENSIONS[d] for d in self.accuracy},
           "average": round(100 * self.average, 2), "overall": round(100 * self.overall, 2),
           "correct": dict(self.correct), "total": dict(self.total),
           "unparseable": self.unparseable}
    if with_predictions:
      out["predictions"] = list(self.predictions)
    return out


def evaluate(critic, source, *, mode: str = "logits", batch_size: int = 8,
             prompt_style: str = "inference", max_new_tokens: int = 64, limit: int | None = None,
             progress: bool = False, indices: Sequence[int] | None = None) -> EvalResult:
  """Label accuracy of `critic` (a `models.critic.Critic`) on an HRA split (`open_hra(..)[split]`).

  mode "logits": argmax of `Critic.label_probs`; "generate": the label at the start of a greedy
  answer (the strict reading, `vocabulary.parse_label`; an answer without one counts as wrong
  and as unparseable).
  prompt_style "inference": `caption + question` as LiFT's run_critic asks; "train": the human
  turn as trained on (the caption after a space). The last short batch is padded with copies so
  every call has one shape. `indices`: only these ratings (a process's share of the split); each
  prediction carries its rating's index, so shares merge back (`from_predictions`).
  """
  if mode not in SCORING_MODES:
    raise ValueError(f"mode must be one of {SCORING_MODES}, got {mode!r}")
  if prompt_style not in ("inference", "train"):
    raise ValueError(f"prompt_style must be 'inference' or 'train', got {prompt_style!r}")
  predictions: list[dict[str, Any]] = []
  n = len(source) if limit is None else min(limit, len(source))
  indices = list(range(n)) if indices is None else [i for i in indices if i < n]
  bar = None
  if progress:
    bar = tqdm(total=len(indices), desc=f"eval ({mode})", unit="rating")
  for start in range(0, len(indices), batch_size):
    batch_indices = indices[start:start + batch_size]
    rows = [source[i] for i in batch_indices]
    real = len(rows)
    rows += [rows[-1]] * (batch_size - real)
    frames = [np.asarray(r["frames"]) for r in rows]
    captions = [(" " if prompt_style == "train" else "") + text(r["caption"]) for r in rows]
    questions = [text(r["dimension"]) for r in rows]
    if mode == "logits":
      probs = critic.label_probs(frames, captions, questions)
      preds = [LABELS[int(np.argmax(p))] for p in probs]
      answers = [None] * len(rows)
    else:
      answers = critic.generate(frames, captions, questions, max_new_tokens=max_new_tokens)
      preds = [parse_label(a) for a in answers]
    for index, r, pred, ans in list(zip(batch_indices, rows, preds, answers))[:real]:
      row = {"index": index, "video_id": text(r["video_id"]), "dimension": text(r["dimension"]),
             "label": text(r["label"]), "pred": pred}
      if ans is not None:
        row["answer"] = ans
      predictions.append(row)
    if bar is not None:
      bar.update(real)
  if bar is not None:
    bar.close()
  return from_predictions(mode, predictions)


def from_predictions(mode: str, predictions: Sequence[dict[str, Any]]) -> EvalResult:
  """The counts of `predictions` (rows of `evaluate`, maybe from several processes), in rating
  order."""
  dims = list(QUESTION_KEYS)
  result = EvalResult(mode, {d: 0 for d in dims}, {d: 0 for d in dims})
  for row in sorted(predictions, key=lambda r: r["index"]):
    result.total[row["dimension"]] += 1
    result.correct[row["dimension"]] += int(row["pred"] == row["label"])
    result.unparseable += int(row["pred"] is None)
    result.predictions.append(row)
  result.total = {d: c for d, c in result.total.items() if c}
  result.correct = {d: result.correct[d] for d in result.total}
  return result

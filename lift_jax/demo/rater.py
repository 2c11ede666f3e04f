"""The demo's stand-in for LiFT's human annotators: written rules about what a video looks like.

The demo's generator is tiny and random: its 9-frame, 16x16 clips are 2x2 coloured blocks (the
readable VAE shows each latent cell as its colour, `demo.readable_vae`).
A person rating such clips against the critic's three questions would still agree on a few things,
and these are the rules (one measure per question, read from the decoded mp4 like a viewer would):

  semantic consistency  Every demo caption sets its scene in warm light (sunset, dawn, a fire, a
                        golden afternoon). A warm palette (red above blue, `warmth`) matches the
                        caption; a cold, bluish one contradicts it. A caption set in cold light
                        (night, moonlight, snow, under water) asks for the opposite.
  fidelity issues       A well-lit picture reads as real; a murky, dark one hides the subject
                        (`brightness`, the mean intensity).
  motion issues         Motion should be smooth: the less consecutive frames jump (`flicker`, the
                        mean absolute change between frames), the better.

Each measure is graded on a curve fixed once: `Rater.calibrate` takes the terciles of the first
videos rated (the base model's), and every later video is graded against those same thresholds
(top third Good, middle Normal, bottom third Bad), so "better" always means better than the base
model typically did. Every label comes with a one-sentence reason, as LiFT-HRA's answers do.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable, Mapping, Sequence

import numpy as np

WARM_WORDS = ("sunset", "sunrise", "dawn", "dusk", "golden", "fire", "firelight", "candle",
              "lamplight", "autumn", "desert", "warm")
COLD_WORDS = ("night", "moon", "moonlit", "snow", "snowy", "ice", "icy", "winter", "underwater",
              "frost", "cold")


def brightness(frames: np.ndarray) -> float:
  """Mean intensity of float frames `[F, H, W, 3]` in [0, 1]."""
  return float(frames.mean())


def warmth(frames: np.ndarray) -> float:
  """Mean red minus mean blue: > 0 is a warm (orange) palette, < 0 a cold (blue) one."""
  return float(frames[..., 0].mean() - frames[..., 2].mean())


def flicker(frames: np.ndarray) -> float:
  """Mean absolute change between consecutive frames (0 for a still clip)."""
  return float(np.abs(np.diff(frames, axis=0)).mean()) if len(frames) > 1 else 0.0


MEASURES: dict[str, Callable[[np.ndarray], float]] = {
    "brightness": brightness, "warmth": warmth, "flicker": flicker}


def light_of(caption: str) -> int:
  """+1 if the caption sets its scene in warm light, -1 in cold light, 0 if it says neither."""
  words = set(re.findall(r"[a-z]+", caption.lower()))
  warm, cold = bool(words & set(WARM_WORDS)), bool(words & set(COLD_WORDS))
  return 0 if warm == cold else (1 if warm else -1)


@dataclasses.dataclass(frozen=True)
class Rule:
  """One question's rule: a measure, which way is better, and a reason per label."""

  dimension: str  # a key of `models.critic.prompts.QUESTIONS`
  measure: str  # a key of MEASURES
  higher_is_better: bool
  reasons: Mapping[str, str]  # label -> one sentence
  caption_light: bool = False  # the better direction follows the caption's light (`light_of`)

  def value(self, frames: np.ndarray, caption: str) -> float:
    """The measure, signed so that larger is better for this caption."""
    sign = 1.0 if self.higher_is_better else -1.0
    if self.caption_light:
      sign *= light_of(caption) or 1.0
    return sign * MEASURES[self.measure](frames)


RULES: tuple[Rule, ...] = (
    Rule("semantic consistency", "warmth", True, caption_light=True, reasons={
        "Good": "The light matches the caption.",
        "Normal": "The light only partly matches the caption.",
        "Bad": "The light contradicts the caption."}),
    Rule("fidelity issues", "brightness", True, reasons={
        "Good": "The scene is clearly lit.",
        "Normal": "The scene is somewhat dim.",
        "Bad": "The scene is dark and murky."}),
    Rule("motion issues", "flicker", False, reasons={
        "Good": "The motion is smooth.",
        "Normal": "The motion is a little jerky.",
        "Bad": "The frames flicker and jump."}),
)


def to_unit(frames: np.ndarray) -> np.ndarray:
  """uint8 `[F, H, W, 3]` -> float64 in [0, 1]."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be [F, H, W, 3], got {frames.shape}")
  return frames.astype(np.float64) / 255.0


class Rater:
  """Grades videos with `RULES` against thresholds fixed by `calibrate` (see the module doc)."""

  def __init__(self, thresholds: Mapping[str, Sequence[float]], rules: Sequence[Rule] = RULES):
    self.rules = tuple(rules)
    missing = [r.dimension for r in self.rules if r.dimension not in thresholds]
    if missing:
      raise ValueError(f"no thresholds for {missing}")
    self.thresholds = {d: (float(lo), float(hi)) for d, (lo, hi) in thresholds.items()}

  @classmethod
  def calibrate(cls, videos: Sequence[np.ndarray], captions: Sequence[str],
                rules: Sequence[Rule] = RULES) -> "Rater":
    """Terciles of each rule's measure over `videos` (uint8 `[F, H, W, 3]` each)."""
    if len(videos) < 3 or len(videos) != len(captions):
      raise ValueError(f"calibration needs >= 3 videos with a caption each, got {len(videos)} "
                       f"videos and {len(captions)} captions")
    units = [to_unit(v) for v in videos]
    th = {}
    for rule in rules:
      vals = [rule.value(u, c) for u, c in zip(units, captions)]
      th[rule.dimension] = tuple(float(x) for x in np.quantile(vals, [1 / 3, 2 / 3]))
    return cls(th, rules)

  def measures(self, frames: np.ndarray) -> dict[str, float]:
    unit = to_unit(frames)
    return {name: fn(unit) for name, fn in MEASURES.items()}

  def rate(self, frames: np.ndarray, caption: str) -> dict[str, tuple[str, str]]:
    """{dimension: (label, reason)} for one video (uint8 `[F, H, W, 3]`) and its caption."""
    unit = to_unit(frames)
    out = {}
    for rule in self.rules:
      lo, hi = self.thresholds[rule.dimension]
      v = rule.value(unit, caption)
      label = "Good" if v > hi else ("Normal" if v > lo else "Bad")
      out[rule.dimension] = (label, rule.reasons[label])
    return out

  def to_json(self) -> dict:
    return {"thresholds": {d: list(t) for d, t in self.thresholds.items()},
            "rules": [dataclasses.asdict(r) | {"reasons": dict(r.reasons)} for r in self.rules]}

  def save(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_json(), f, indent=2)

  @classmethod
  def load(cls, path: str) -> "Rater":
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    by_dim = {r.dimension: r for r in RULES}
    rules = [by_dim[r["dimension"]] for r in data["rules"]]
    return cls(data["thresholds"], rules)

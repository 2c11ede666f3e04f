"""Asking the LiFT-Critic its three questions about many videos: the model side of scoring.

Two modes:
  "generate" (the paper's): the critic answers each question as text (LiFT samples at temperature
      0.2, `LIFT_SAMPLING`).
  "logits" (deterministic, one forward pass per question, no decoding): P(Good) / P(Normal) /
      P(Bad) of the answer's first token right after the assistant prompt.

Several videos go through the critic per call: `batch_videos` videos x 3 questions, each video's
frames encoded once. The last, short batch is padded with copies so every call has one shape.
Turning answers into labels and rewards is LiFT's (`lift.reward`), and the score stage
(manifest -> scores.jsonl) is `lift_jax.stages.score`.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import jax
import numpy as np

from lift_jax.models.critic import prompts
from lift_jax.models.critic.vocabulary import LABELS, QUESTION_KEYS

MODES = ("generate", "logits")
# LiFT's run_critic_*.py: temperature 0.2 (sampled), no top_p, HF's default top_k 50, one beam.
LIFT_SAMPLING = dict(temperature=0.2, top_k=50, top_p=1.0, num_beams=1, max_new_tokens=512)


def sampling_settings(sampling: dict | Any | None) -> dict[str, Any]:
  """LiFT's sampling with overrides; checks what `Critic.generate` can do (no beam search)."""
  d = dict(LIFT_SAMPLING)
  if sampling is not None:
    d.update(sampling.to_dict() if hasattr(sampling, "to_dict") else dict(sampling))
  unknown = sorted(set(d) - set(LIFT_SAMPLING))
  if unknown:
    raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(LIFT_SAMPLING)}")
  if int(d["num_beams"]) != 1:
    raise ValueError(f"sampling.num_beams={d['num_beams']}: only 1 (LiFT's setting) is supported")
  d["top_p"] = 1.0 if d["top_p"] is None else float(d["top_p"])
  d["top_k"] = 0 if d["top_k"] is None else int(d["top_k"])
  return d


@dataclasses.dataclass
class Answers:
  """The critic's raw answers about one video, per question: text (generate) or label
  probabilities {label: p} (logits)."""

  texts: dict[str, str] | None = None
  probs: dict[str, dict[str, float]] | None = None


class Questioner:
  """A critic plus how to ask it; `ask(videos, captions)` -> one `Answers` a video."""

  def __init__(self, critic, mode: str = "generate", *, sampling: dict | None = None,
               batch_videos: int = 1, seed: int = 0,
               questions: Sequence[str] = QUESTION_KEYS, pad_batches: bool = True):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_videos < 1:
      raise ValueError(f"batch_videos must be >= 1, got {batch_videos}")
    self.critic = critic
    self.mode = mode
    self.sampling = sampling_settings(sampling)
    self.batch_videos = int(batch_videos)
    self.seed = int(seed)
    self.questions = tuple(questions)
    self.pad_batches = pad_batches
    if mode == "logits":  # fails now, not after the first batch, if the labels share a token
      self.label_ids = prompts.label_token_ids(critic.tokenizer, critic.template, LABELS)

  def pixel_values(self, video: np.ndarray) -> np.ndarray:
    """uint8 `[N,H,W,3]` -> the critic's `[F,3,S,S]` (so a reader need not keep whole clips)."""
    return self.critic.pixel_values(video)

  def ask(self, videos: Sequence[np.ndarray], captions: Sequence[str],
          keys: Sequence[str]) -> list[Answers]:
    """Answers for up to `batch_videos` videos (uint8 clips or `pixel_values` outputs) in one call.

    `keys` (e.g. paths) seed the batch's sampling, so a batch is answered the same whatever ran
    before it.
    """
    videos, captions, n = list(videos), list(captions), len(videos)
    if self.pad_batches and n < self.batch_videos:
      pad = self.batch_videos - n
      videos, captions = videos + [videos[-1]] * pad, captions + [captions[-1]] * pad
    q = len(self.questions)
    args = (videos, [c for c in captions for _ in range(q)], list(self.questions) * len(videos),
            [v for v in range(len(videos)) for _ in range(q)])
    if self.mode == "generate":
      s = self.sampling
      rng = None
      if s["temperature"] > 0:
        rng = jax.random.fold_in(jax.random.key(self.seed),
                                 zlib.crc32("\n".join(keys).encode()) & 0x7FFFFFFF)
      texts = self.critic.generate(*args, max_new_tokens=int(s["max_new_tokens"]),
                                   temperature=float(s["temperature"]), top_k=s["top_k"],
                                   top_p=s["top_p"], rng=rng)
      return [Answers(texts=dict(zip(self.questions, texts[i * q:(i + 1) * q])))
              for i in range(n)]
    probs = np.asarray(self.critic.label_probs(*args, labels=LABELS), np.float64)
    return [Answers(probs={dim: {label: float(x) for label, x in zip(LABELS, p)}
                           for dim, p in zip(self.questions, probs[i * q:(i + 1) * q])})
            for i in range(n)]

"""The LiFT-Critic's vocabulary: its three questions, its three labels, how a label is read from an
answer, and which frames of a video it sees. One place, used by the critic (prompts, scoring), the
HRA dataset builder and LiFT's reward: none of them spells these out again.

Pure Python and NumPy (no JAX), so data tools can use it.
"""

from __future__ import annotations

import re

import numpy as np

# The answer labels, in the order the critic's logits are read (LiFT's "Good/Normal/Bad").
LABELS: tuple[str, ...] = ("Good", "Normal", "Bad")
# Frames a video is shown as (VILA1.5's num_video_frames for the LiFT-Critic).
NUM_FRAMES = 8

# Output key -> question appended to the caption (leading space included), in the order LiFT asks
# (`run_critic_{13b,40b}.py`, and the human turns of LiFT-HRA).
QUESTIONS: dict[str, str] = {
    "semantic consistency": (
        " Please identify the semantic consistency issues in this video, focusing on the alignment "
        "between the text and the visual content. Specifically, point out any discrepancies "
        "regarding the subject (e.g., person or animal), quantity, color, scene description, style, "
        "and other relevant aspects."),
    "fidelity issues": (
        " Please identify the fidelity issues in this video, assessing the realism of the content, "
        "including people, animals, and other objects. Highlight any problems such as missing "
        "limbs, deformed hands or faces, or other unrealistic elements."),
    "motion issues": (
        " Please identify the motion issues in this video, focusing on the continuity and "
        "smoothness of actions, as well as their coherence and adherence to the laws of physics."),
}
QUESTION_KEYS: tuple[str, ...] = tuple(QUESTIONS)
# Paper dimension names of the three keys.
DIMENSIONS = {"semantic consistency": "Semantic Consistency", "fidelity issues": "Video Fidelity",
              "motion issues": "Motion Smoothness"}

# Reading a label from an answer:
#   "lift" : LiFT's `process_reward_score.get_score`: "Normal" anywhere in the text -> Normal, else
#            "Bad" anywhere -> Bad, else Good (case-sensitive; never fails, garbage reads as Good).
#   "start": the strict reading: the answer must *begin* with Good / Normal / Bad, any case, after
#            leading whitespace and punctuation (`"  **bad**: ..."` is Bad), as a whole word
#            ("Goodness" is not Good); anything else has no label (None).
PARSE_RULES = ("start", "lift")

_LEAD = re.compile(r"^[\W_]*")  # whitespace, punctuation, markdown (**, __, quotes, bullets)
_START = re.compile(r"(good|normal|bad)(?![A-Za-z0-9])", re.IGNORECASE)
_REASON_LEAD = re.compile(r"^[\s.:;,!\-\u2013\u2014*_)\]\"'`]*")  # ". ", ": ", " - ", "** - "


def split_answer(answer: str | None) -> tuple[str | None, str]:
  """`"Good. The video ..."` -> ("Good", "The video ..."); (None, answer stripped) if the strict
  ("start") reading finds no label."""
  text = (answer or "").strip()
  lead = _LEAD.match(text).end()
  m = _START.match(text, lead)
  if not m:
    return None, text
  return m.group(1).capitalize(), _REASON_LEAD.sub("", text[m.end():]).strip()


def parse_label(answer: str | None, rule: str = "start") -> str | None:
  """The answer's label under `rule` (see PARSE_RULES); None when "start" cannot read one."""
  if rule == "start":
    return split_answer(answer)[0]
  if rule == "lift":
    text = answer or ""
    return "Normal" if "Normal" in text else "Bad" if "Bad" in text else "Good"
  raise ValueError(f"parse rule must be one of {PARSE_RULES}, got {rule!r}")


def strictly_readable(answer: str | None) -> bool:
  """Whether the strict reading finds a label (what both rules count as a well-formed answer)."""
  return split_answer(answer)[0] is not None


def sample_frame_indices(n: int, k: int = NUM_FRAMES) -> np.ndarray:
  """k frame indices spread over a video's n frames, as VILA (the LiFT-Critic) picks them.

  VILA's `get_frame_from_vcap` uses `np.linspace(0, n-1, k, dtype=int)`: the float positions are
  truncated toward zero, not rounded. With n < k indices repeat (the critic's inputs hold k frames).
  """
  if n < 1:
    raise ValueError(f"need at least one frame to sample from, got n={n}")
  if k < 1:
    raise ValueError(f"k must be positive, got {k}")
  return np.linspace(0, n - 1, k, dtype=int)

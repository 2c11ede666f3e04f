"""The LiFT-Critic's prompts, exactly as it was trained and run (VILA `conversation.py`, LiFT's
`run_critic_{13b,40b}.py`).

Per video and per dimension the critic sees one user turn: one `<image>\\n` per sampled frame, the
caption, then the dimension's question (which starts with a space). The 13B critic uses the
`vicuna_v1` template, the 40B critic `hermes-2` (ChatML). `tokenize_prompt` is VILA's
`tokenizer_image_token`: `<image>` is not a vocabulary token but the sentinel id -200, and every
chunk after the first is tokenized on its own with its BOS dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

# The questions live with the rest of the critic's vocabulary; re-exported for prompt callers.
from lift_jax.models.critic.vocabulary import (DIMENSIONS, LABELS, NUM_FRAMES,  # noqa: F401
                                               QUESTION_KEYS, QUESTIONS)

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200


@dataclasses.dataclass(frozen=True)
class Template:
  """One VILA conversation template (the two separator styles the critics use)."""

  name: str
  system: str
  roles: tuple[str, str]
  style: str  # "two" (vicuna) or "mpt" (ChatML)
  sep: str
  sep2: str | None = None

  @property
  def stop_string(self) -> str:
    """What ends an answer: `sep2` for the TWO style, `sep` otherwise (VILA's run scripts)."""
    return self.sep2 if self.style == "two" else self.sep

  def prompt(self, message: str, answer: str | None = None) -> str:
    """`Conversation.get_prompt()` for one user turn and an open (or given) assistant turn."""
    user, assistant = self.roles
    if self.style == "two":
      text = self.system + self.sep + user + ": " + message + self.sep
      return text + (assistant + ": " + answer + self.sep2 if answer is not None
                     else assistant + ":")
    if self.style == "mpt":
      text = self.system + self.sep + user + message + self.sep
      return text + assistant + (answer + self.sep if answer is not None else "")
    raise ValueError(f"template {self.name!r}: unknown separator style {self.style!r}")

  @property
  def answer_prefix(self) -> str:
    """The text between the end of `prompt(...)` and the answer itself."""
    return " " if self.style == "two" else ""


VICUNA_V1 = Template(
    name="vicuna_v1",
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"), style="two", sep=" ", sep2="</s>")

HERMES_2 = Template(
    name="hermes-2", system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), style="mpt", sep="<|im_end|>")

TEMPLATES: dict[str, Template] = {"vicuna_v1": VICUNA_V1, "v1": VICUNA_V1, "hermes-2": HERMES_2}

# VILA's CONVERSATION_MODE_MAPPING (the ones with these two templates).
MODE_BY_MODEL_NAME = {"vila1.5-3b": "vicuna_v1", "vila1.5-13b": "vicuna_v1",
                      "vila1.5-40b": "hermes-2", "lift-critic-13b": "vicuna_v1",
                      "lift-critic-40b": "hermes-2"}


def get_template(name: str | Template) -> Template:
  if isinstance(name, Template):
    return name
  if name not in TEMPLATES:
    raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
  return TEMPLATES[name]


def user_message(caption: str, question: str, num_frames: int = NUM_FRAMES) -> str:
  """`"<image>\\n" * frames + caption + question`, as `run_critic_*.py` builds `qs`."""
  if question in QUESTIONS:
    question = QUESTIONS[question]
  return (IMAGE_TOKEN + "\n") * num_frames + caption + question


def build_prompt(caption: str, question: str, template: str | Template = "vicuna_v1",
                 num_frames: int = NUM_FRAMES) -> str:
  """The full prompt string the critic sees; `question` is a key of QUESTIONS or its text."""
  return get_template(template).prompt(user_message(caption, question, num_frames))


def tokenize_prompt(tokenizer, prompt: str, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
  """VILA's `tokenizer_image_token`: token ids with `image_token_index` at each `<image>`."""
  chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
  ids: list[int] = []
  offset = 0
  if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
    offset = 1
    ids.append(chunks[0][0])
  separator = [image_token_index] * (offset + 1)
  pieces = [piece for chunk in chunks for piece in (chunk, separator)][:-1]
  for piece in pieces:  # every chunk (and separator) loses its first `offset` items: the BOS
    ids.extend(piece[offset:])
  return ids


def label_token_ids(tokenizer, template: str | Template,
                    labels: Sequence[str] = LABELS) -> dict[str, int]:
  """The first token of each answer label as the critic emits it right after the prompt.

  Found by tokenizing the prompt's last chunk with and without `answer_prefix + label` (the same
  chunk tokenization `tokenize_prompt` uses), so tokenizer quirks such as SentencePiece's leading
  `▁` come out as in training.
  """
  template = get_template(template)
  tail = template.prompt("caption question")
  base = tokenizer(tail).input_ids
  out = {}
  for label in labels:
    ids = tokenizer(tail + template.answer_prefix + label).input_ids
    k = 0
    while k < min(len(ids), len(base)) and ids[k] == base[k]:
      k += 1
    if k >= len(ids):
      raise ValueError(f"label {label!r} adds no token after the {template.name} prompt")
    out[label] = ids[k]
  if len(set(out.values())) != len(out):
    raise ValueError(f"labels {list(labels)} share a first token: {out}")
  return out

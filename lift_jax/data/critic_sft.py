"""LiFT-Critic SFT samples: an HRA rating -> the token ids, image slots and answer targets the
critic trains on, as VILA's `LazySupervisedDataset` + `preprocess_v1`/`preprocess_mpt` build them.

The human turn with `<video>` removed (its leading space kept), one `<image>\\n` per frame in front
(8, or all n frames of a video shorter than that, as VILA's `frames_loaded`), the answer
right-stripped; the template's prompt with the answer (`Template.prompt(message, answer)`, which
ends with the stop string) is tokenized with `tokenize_prompt`. The loss mask is everything after
the inference prompt (`Template.prompt(message)`, what the critic sees when asked): with a
SentencePiece tokenizer that is exactly VILA's (`instruction_len - 2`) mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from lift_jax.data import loaders
from lift_jax.data.hra import text
from lift_jax.models.critic import prompts

IGNORE_INDEX = -100
BATCH_KEYS = ("frames", "token_ids", "image_slots", "attention_mask", "target_pos", "target_ids")


def training_message(user_text: str, num_frames: int = prompts.NUM_FRAMES) -> str:
  """VILA's video sample: `"<image>\\n" * frames + question` (the question as stored in HRA)."""
  return (prompts.IMAGE_TOKEN + "\n") * num_frames + user_text


@dataclasses.dataclass(frozen=True)
class SftTokens:
  """One tokenized sample: ids with `IMAGE_TOKEN_INDEX` per frame; labels -100 but the answer."""

  ids: tuple[int, ...]
  labels: tuple[int, ...]
  text: str  # the full training string (template with the answer and its stop string)

  @property
  def num_targets(self) -> int:
    return sum(1 for x in self.labels if x != IGNORE_INDEX)


def encode_sft(tokenizer, template: str | prompts.Template, user_text: str, answer: str, *,
               num_frames: int = prompts.NUM_FRAMES) -> SftTokens:
  """Tokenizes one rating; the loss covers what follows the inference prompt: the answer and the
  stop token. Raises if the prompt's tokens are not a prefix of the sample's (VILA would drop
  such a sample with "tokenization mismatch")."""
  template = prompts.get_template(template)
  message = training_message(user_text, num_frames)
  text = template.prompt(message, answer.rstrip())
  ids = prompts.tokenize_prompt(tokenizer, text)
  prompt_ids = prompts.tokenize_prompt(tokenizer, template.prompt(message))
  k = 0
  while k < min(len(ids), len(prompt_ids)) and ids[k] == prompt_ids[k]:
    k += 1
  # A tokenizer may merge the prompt's last piece with the answer's first (SentencePiece's "▁"
  # before the label): then the merged token is the first target.
  if k < len(prompt_ids) - 1 or k >= len(ids):
    raise ValueError(f"the inference prompt does not tokenize as a prefix of the training sample "
                     f"({k} of {len(prompt_ids)} tokens agree): {text[-160:]!r}")
  labels = [IGNORE_INDEX] * k + list(ids[k:])
  return SftTokens(tuple(ids), tuple(labels), text)


def expand_images(tokens: SftTokens, *, tokens_per_frame: int) -> tuple[np.ndarray, ...]:
  """Token ids, frame-relative image slots (`f·P + j`, -1 for text) and labels, one entry per
  LLM position (each `<image>` becomes `tokens_per_frame` slots)."""
  ids, slots, labels = [], [], []
  frame = 0
  for i, lab in zip(tokens.ids, tokens.labels):
    if i == prompts.IMAGE_TOKEN_INDEX:
      base = frame * tokens_per_frame
      ids += [0] * tokens_per_frame
      slots += range(base, base + tokens_per_frame)
      labels += [IGNORE_INDEX] * tokens_per_frame
      frame += 1
    else:
      ids.append(i)
      slots.append(-1)
      labels.append(lab)
  return (np.asarray(ids, np.int32), np.asarray(slots, np.int32), np.asarray(labels, np.int32))


def sequence_sizes(tokenizer, template, texts: Sequence[Sequence[str]], *, num_frames: int,
                   tokens_per_frame: int, multiple: int = 64) -> tuple[int, int]:
  """(max_length, max_targets) over `[.., .., user_text, answer]` rows, rounded up to `multiple`
  (length) and 8 (targets), so one compiled step serves every batch."""
  length = targets = 1
  for row in texts:
    tok = encode_sft(tokenizer, template, row[-2], row[-1], num_frames=num_frames)
    n_img = sum(1 for i in tok.ids if i == prompts.IMAGE_TOKEN_INDEX)
    length = max(length, len(tok.ids) + n_img * (tokens_per_frame - 1))
    targets = max(targets, tok.num_targets)
  return -(-length // multiple) * multiple, -(-targets // 8) * 8


class SftTransform:
  """HRA example -> padded training arrays (a class, so grain can pickle it into workers).

  `frames` uint8 [F,H,W,3]: the example's n <= F frames, then zero rows that no image slot points
  at (so examples of any n stack; the prompt holds n `<image>`s, as VILA trains a short video);
  `token_ids`, `image_slots` (frame-relative; the step adds the row's
  offset), `attention_mask` [T] right-padded; `target_pos` [A] (the position whose logits predict
  each target) and `target_ids` [A] (-1 pads).
  """

  def __init__(self, tokenizer, template: str, *, num_frames: int, tokens_per_frame: int,
               max_length: int, max_targets: int, image_size: tuple[int, int]):
    self.tokenizer, self.template = tokenizer, prompts.get_template(template).name
    self.num_frames, self.tokens_per_frame = num_frames, tokens_per_frame
    self.max_length, self.max_targets = max_length, max_targets
    self.image_size = tuple(image_size)

  def __call__(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
    frames = np.asarray(ex["frames"])
    f = len(frames)
    if frames.shape[1:] != self.image_size + (3,) or not 1 <= f <= self.num_frames:
      raise ValueError(f"{text(ex['video_id'])}: frames {frames.shape} but the critic takes "
                       f"1..{self.num_frames} frames of {self.image_size + (3,)}; rebuild the HRA "
                       "dataset with the critic's image size")
    tok = encode_sft(self.tokenizer, self.template, text(ex["user_text"]), text(ex["answer"]),
                     num_frames=f)
    ids, slots, labels = expand_images(tok, tokens_per_frame=self.tokens_per_frame)
    n, t, a = len(ids), self.max_length, self.max_targets
    pos = np.nonzero(labels != IGNORE_INDEX)[0]
    if n > t or len(pos) > a:
      raise ValueError(f"{text(ex['video_id'])} ({text(ex['dimension'])}): {n} tokens / "
                       f"{len(pos)} answer tokens exceed max_length={t} / max_targets={a}")
    out = {"frames": np.zeros((self.num_frames,) + frames.shape[1:], np.uint8),
           "token_ids": np.zeros(t, np.int32), "image_slots": np.full(t, -1, np.int32),
           "attention_mask": np.zeros(t, bool), "target_pos": np.zeros(a, np.int32),
           "target_ids": np.full(a, -1, np.int32)}
    out["frames"][:f] = frames
    out["token_ids"][:n], out["image_slots"][:n], out["attention_mask"][:n] = ids, slots, True
    out["target_pos"][:len(pos)] = pos - 1
    out["target_ids"][:len(pos)] = labels[pos]
    return out


def collate(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in BATCH_KEYS}


def make_sft_dataset(source, transform: SftTransform, *, batch_size: int, seed: int = 0,
                     num_epochs: int | None = None, process_index: int | None = None,
                     process_count: int | None = None):
  """grain pipeline: all ratings shuffled each epoch (seeded) -> transform -> batches of
  `batch_size` (per host) -> this host's rows of every global batch.

  As `loaders.make_dataset`: every host builds the same global stream and takes local batches
  p, p + P, ... (host p of P), so global batch k holds the examples one process would put in its
  batch k and training does not depend on the number of hosts.
  """
  grain = loaders._grain()
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  if len(source) < batch_size * process_count:
    raise ValueError(f"{len(source)} training example(s) for a global batch of "
                     f"{batch_size} x {process_count} hosts")
  ds = grain.MapDataset.source(source).shuffle(seed=loaders._seed(seed, 17))
  local = ds.repeat(num_epochs).map(transform).batch(batch_size, drop_remainder=True)
  if process_count == 1:
    return local
  if loaders.steps_per_epoch(local) is not None:  # every host the same number of steps
    local = local[:len(local) - len(local) % process_count]
  return local[process_index::process_count]

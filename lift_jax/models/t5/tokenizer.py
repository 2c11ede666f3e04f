"""Prompts -> T5 input ids, exactly as diffusers' `CogVideoXPipeline._get_t5_prompt_embeds` makes them.

The pipeline calls its `T5Tokenizer` with `padding="max_length", max_length=226, truncation=True,
add_special_tokens=True`: every prompt ends with `</s>` (id 1), also when it is cut, and is padded
with `<pad>` (id 0). It passes no attention mask to T5, so padding tokens attend and are attended
to; `encode` therefore returns ids only. transformers is imported on first use (tokenizers
backend, no PyTorch).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from lift_jax.checkpoint.safetensors import CheckpointError

MAX_LENGTH = 226  # CogVideoX's max_sequence_length (1.0 and 1.5 pipelines alike)
SUBFOLDER = "tokenizer"
_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")

logger = logging.getLogger(__name__)


def resolve_folder(path: str) -> str:
  """Accepts the tokenizer folder itself or a pipeline root holding `tokenizer/`."""
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: tokenizer folder does not exist")
  has_files = lambda p: any(os.path.isfile(os.path.join(p, f)) for f in _FILES)
  if has_files(path):
    return path
  nested = os.path.join(path, SUBFOLDER)
  if os.path.isdir(nested) and has_files(nested):
    return nested
  raise CheckpointError(f"{path}: no tokenizer found (expected one of {list(_FILES)} here or in "
                        f"{SUBFOLDER}/)")


class CogVideoXTokenizer:
  """`tok.encode(prompts) -> int32 [B, 226]`, the ids CogVideoX feeds its T5 encoder."""

  def __init__(self, tokenizer, max_length: int = MAX_LENGTH):
    self.tokenizer = tokenizer
    self.max_length = max_length

  @classmethod
  def from_pretrained(cls, path: str, max_length: int = MAX_LENGTH) -> "CogVideoXTokenizer":
    """Loads the transformers tokenizer saved in `path` (or `path/tokenizer/`); no network."""
    try:
      from transformers import AutoTokenizer
    except ImportError as err:
      raise ImportError("the T5 prompt tokenizer needs `transformers` and `sentencepiece` "
                        "(pip install transformers sentencepiece)") from err
    folder = resolve_folder(path)
    try:
      tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
      raise CheckpointError(f"{folder}: cannot load the tokenizer ({err})") from err
    return cls(tok, max_length=max_length)

  @property
  def pad_id(self) -> int:
    return int(self.tokenizer.pad_token_id)

  @property
  def eos_id(self) -> int:
    return int(self.tokenizer.eos_token_id)

  def encode(self, prompts: str | Sequence[str]) -> np.ndarray:
    """int32 `[B, max_length]`: `</s>`-terminated, cut to fit, right-padded; a cut is logged."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not all(isinstance(p, str) for p in prompts):
      raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
    ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                         truncation=True, add_special_tokens=True, return_tensors="np").input_ids
    full = self.tokenizer(prompts, add_special_tokens=True).input_ids
    for i, row in enumerate(full):
      if len(row) > self.max_length:
        removed = self.tokenizer.decode(row[self.max_length - 1:-1])
        logger.warning("prompt %d was truncated to %d tokens; removed: %r", i, self.max_length,
                       removed)
    return np.asarray(ids, np.int32)

  __call__ = encode


def load_tokenizer(path: str, max_length: int = MAX_LENGTH) -> CogVideoXTokenizer:
  return CogVideoXTokenizer.from_pretrained(path, max_length=max_length)

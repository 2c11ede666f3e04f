"""Llama's SentencePiece tokenizer as VILA runs it: `LlamaTokenizer(use_fast=False, legacy=False)`.

VILA loads the critic's `llm/tokenizer.model` with transformers' slow (SentencePiece) tokenizer.
The tokenizers-backed class that transformers 5 builds from the same file (its only
`LlamaTokenizer`) splits whitespace runs and the spaces around special tokens differently
("snow.  Please" -> `▁▁ Please` instead of SentencePiece's `▁ ▁Please`), so prompts and SFT
labels would not be the critic's. `load` returns the slow semantics on either transformers major
version: 4.x still has the class; on 5.x it is rebuilt here on transformers' SentencePiece backend.
transformers is imported on first use.
"""

from __future__ import annotations

import functools
import os

SPIECE_UNDERLINE = "▁"
VOCAB_FILE = "tokenizer.model"


@functools.cache
def sentencepiece_llama_class():
  """transformers 4.x `LlamaTokenizer(legacy=False)` on transformers 5's SentencePiece backend
  (None on 4.x, which has the class itself): "▁" is prepended once to the text (not after special
  tokens), SentencePiece encodes each piece between special tokens without its dummy prefix, and
  one BOS leads (`add_bos_token`)."""
  try:
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend  # heavy, optional
  except ImportError:
    return None

  class SentencePieceLlamaTokenizer(SentencePieceBackend):
    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, *, add_bos_token: bool = True,
                 add_eos_token: bool = False, add_prefix_space: bool = True, **kwargs):
      kwargs["legacy"] = False
      self.add_prefix_space = add_prefix_space
      pattern = {(True, False): "bos", (True, True): "bos_eos", (False, True): "eos",
                 (False, False): "none"}[(bool(add_bos_token), bool(add_eos_token))]
      kwargs.setdefault("special_tokens_pattern", pattern)
      super().__init__(vocab_file=vocab_file, add_bos_token=add_bos_token,
                       add_eos_token=add_eos_token, **kwargs)

    def tokenize(self, text: str, **kwargs) -> list[str]:
      if not text:
        return []
      text = text.replace(SPIECE_UNDERLINE, " ")
      if self.add_prefix_space:
        text = SPIECE_UNDERLINE + text
      tokens = super().tokenize(text, **kwargs)
      if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
        tokens = tokens[1:]
      return tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
      """SentencePiece's own decoding (byte fallbacks joined), special tokens kept as text."""
      tokens = list(tokens)
      if tokens and tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
        tokens[0] = tokens[0][1:]
      out, pending = "", []
      for token in tokens:
        if token in self.all_special_tokens:
          out += self.sp_model.decode(pending) + token
          pending = []
        else:
          pending.append(token)
      return out + self.sp_model.decode(pending)

  return SentencePieceLlamaTokenizer


def is_sentencepiece_llama(folder: str) -> bool:
  """A folder holding Llama's `tokenizer.model` (what Vicuna/VILA1.5-13b and Yi ship)."""
  return os.path.isfile(os.path.join(folder, VOCAB_FILE))


def load(folder: str):
  """The slow-semantics Llama tokenizer saved in `folder` (its tokenizer_config.json applies)."""
  cls = sentencepiece_llama_class()
  if cls is None:
    from transformers import AutoTokenizer  # heavy, optional
    return AutoTokenizer.from_pretrained(folder, use_fast=False, legacy=False,
                                         local_files_only=True)
  return cls.from_pretrained(folder, local_files_only=True)

"""The host-side critic: a loaded `VilaCritic` with its tokenizer and conversation template, what a
scoring tool calls.

  critic = Critic.load(vila_folder, lora=adapter_folder, dtype="bfloat16", mesh=mesh)
  px = critic.pixel_values(video_uint8 [N,H,W,3])        8 frames at linspace(0, N-1, 8), resized
                                                          (all N frames when N < 8, as VILA)
  critic.generate([px, ...], captions, question)          -> list[str] answers ("Good. ...")
  critic.first_token_logits([px, ...], captions, question) -> [B, vocab] logits of the answer's
      first token (one forward, no decoding); critic.label_probs(...) -> [B, 3] P(Good/Normal/Bad)
  critic.ask_all(px, caption, mode="generate"|"logits")  -> {question key: answer or probs}
`question` is a key of `prompts.QUESTIONS` ("semantic consistency", "fidelity issues",
"motion issues") or a free text. Several prompts over the same video share one encoding of its
frames (`video_index`): `build_batch` lays out each prompt's image slots on the host. A video of
n < 8 frames is shown as VILA shows it: n `<image>` tokens and n frames' features; its prompts are
shorter and the batch is left-padded with the attention mask, no frame is repeated or invented.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax.models import llama as llama_lib
from lift_jax.models.critic import prompts
from lift_jax.models.critic.modeling import VilaConfig, VilaCritic
from lift_jax.models.critic.params import load_critic, load_tokenizer
from lift_jax.models.critic.vocabulary import LABELS, sample_frame_indices
from lift_jax.parallel import distributed, serving

# Sampling of LiFT's run_critic_*.py: temperature 0.2, no top_p, transformers' default top_k 50.
LIFT_SAMPLING = dict(temperature=0.2, top_k=50, top_p=1.0, max_new_tokens=512)


def sample_frames(video: np.ndarray, num: int = prompts.NUM_FRAMES) -> np.ndarray:
  """`[N,H,W,3]` uint8 RGB frames -> the min(N, `num`) frames the critic sees (`vocabulary`'s
  sampling)."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"video must be [frames, H, W, 3] RGB, got {video.shape}")
  return video[sample_frame_indices(len(video), num)]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Left-padded prompts with their image slots laid out (see `VilaCritic.embed_inputs`)."""

  token_ids: np.ndarray  # [B, S] int32; 0 at image slots and padding
  image_slots: np.ndarray  # [B, S] int32; -1 for text and padding
  attention_mask: np.ndarray  # [B, S] bool
  prompts: tuple[str, ...]


def build_batch(tokenizer, texts: Sequence[str], video_index: Sequence[int], *, num_frames: int,
                tokens_per_frame: int, frame_counts: Sequence[int] | None = None,
                pad_to_multiple: int = 8, bucket: bool = True) -> PromptBatch:
  """Tokenizes prompts (`prompts.tokenize_prompt`) and expands each `<image>` into its slots.

  The k-th `<image>` of prompt b is frame k of video `video_index[b]`. `num_frames` is the pixel
  array's frames per video (the slot stride); video v holds `frame_counts[v]` real frames (default
  all `num_frames`) and its prompts must have exactly that many `<image>`s. The length is rounded
  up to its bucket (`parallel.serving.bucket_length`), so a scoring run compiles a bounded number
  of programs; `bucket=False`: only to a multiple of `pad_to_multiple`.
  """
  if len(texts) != len(video_index):
    raise ValueError(f"{len(texts)} prompts but {len(video_index)} video indices")
  rows = []
  for text, v in zip(texts, video_index):
    ids = prompts.tokenize_prompt(tokenizer, text)
    n_img = sum(1 for i in ids if i == prompts.IMAGE_TOKEN_INDEX)
    want = num_frames if frame_counts is None else int(frame_counts[v])
    if not 1 <= want <= num_frames:
      raise ValueError(f"video {v} has {want} frames; the critic takes 1..{num_frames}")
    if n_img != want:
      raise ValueError(f"prompt has {n_img} <image> slots but video {v} has {want} frames: "
                       f"{text[:80]!r}...")
    tok, slot, k = [], [], 0
    for i in ids:
      if i == prompts.IMAGE_TOKEN_INDEX:
        base = (v * num_frames + k) * tokens_per_frame
        tok += [0] * tokens_per_frame
        slot += list(range(base, base + tokens_per_frame))
        k += 1
      else:
        tok.append(i)
        slot.append(-1)
    rows.append((tok, slot))
  length = max(len(t) for t, _ in rows)
  length = -(-length // pad_to_multiple) * pad_to_multiple
  length = serving.bucket_length(length) if bucket else length
  b = len(rows)
  token_ids = np.zeros((b, length), np.int32)
  image_slots = np.full((b, length), -1, np.int32)
  mask = np.zeros((b, length), bool)
  for r, (tok, slot) in enumerate(rows):
    token_ids[r, length - len(tok):] = tok
    image_slots[r, length - len(slot):] = slot
    mask[r, length - len(tok):] = True
  return PromptBatch(token_ids, image_slots, mask, tuple(texts))


# graph_updates=False: inference updates nothing, and graph-mode nnx.jit returns every argument's
# state as an output of the program, so XLA copied all the weights each call (+3.5 GB transient on
# the 40b critic's 3.5 GB of fp32 weights, measured on CPU).
@nnx.jit(graph_updates=False)
def _embed(model: VilaCritic, px, ids, slots):
  return model.embed_inputs(px, ids, slots)


@nnx.jit(graph_updates=False)
def _last_logits(model: VilaCritic, px, ids, slots, mask):
  return model(px, ids, slots, mask, last_only=True)[:, -1]


class Critic:
  """A loaded critic with its tokenizer and conversation template (see the module doc)."""

  bucket_prompts = True  # round prompt lengths up to buckets (bounded compiles; False: exact)

  def __init__(self, model: VilaCritic, tokenizer, template: str | None = None):
    self.model = model
    self.tokenizer = tokenizer
    # Read once: scoring threads ask for it while the model runs, and NNX modules are not safe to
    # read from another thread then ("'VilaCritic' object has no attribute 'config'").
    self._config = model.config
    self.template = prompts.get_template(template or model.config.template)

  @classmethod
  def load(cls, path: str, lora: str | None = None, *, tokenizer=None, template: str | None = None,
           **load_kwargs) -> "Critic":
    model = load_critic(path, lora, template=template, **load_kwargs)
    return cls(model, tokenizer or load_tokenizer(path), template)

  @property
  def config(self) -> VilaConfig:
    return self._config

  @property
  def stop_strings(self) -> list[str]:
    return [self.template.stop_string]

  def pixel_values(self, video: np.ndarray) -> np.ndarray:
    """uint8 RGB `[N,H,W,3]` (a whole clip) -> float32 `[n,3,S,S]`, n = min(N, num_video_frames)."""
    return self.config.image(sample_frames(video, self.config.num_video_frames))

  def _pixels(self, videos) -> tuple[np.ndarray, list[int]]:
    """Videos (uint8 clips or `pixel_values` outputs) -> (float32 `[V,F,3,S,S]`, frames per video).

    A video of n < F frames fills rows 0..n-1; the rest stay zero and no image slot points at
    them (one compiled shape; the LLM sees only the n real frames).
    """
    f = self.config.num_video_frames
    size = (3, self.config.image.height, self.config.image.width)
    px = np.zeros((len(videos), f) + size, np.float32)
    counts = []
    for i, v in enumerate(videos):
      v = np.asarray(v)
      v = self.pixel_values(v) if v.dtype == np.uint8 else v.astype(np.float32)
      if v.ndim != 4 or v.shape[1:] != size or not 1 <= len(v) <= f:
        raise ValueError(f"video {i}: pixel values must be [1..{f}, {', '.join(map(str, size))}], "
                         f"got {v.shape}")
      px[i, :len(v)] = v
      counts.append(len(v))
    return px, counts

  def prompts(self, captions: Sequence[str], questions: Sequence[str] | str,
              frame_counts: Sequence[int] | None = None) -> list[str]:
    """One prompt per caption; `frame_counts[i]` `<image>`s in prompt i (default all F)."""
    if isinstance(questions, str):
      questions = [questions] * len(captions)
    if frame_counts is None:
      frame_counts = [self.config.num_video_frames] * len(captions)
    return [prompts.build_prompt(c, q, self.template, n)
            for c, q, n in zip(captions, questions, frame_counts)]

  def batch(self, captions: Sequence[str], questions: Sequence[str] | str,
            video_index: Sequence[int] | None = None,
            frame_counts: Sequence[int] | None = None) -> PromptBatch:
    """Prompts laid out for the forward; `frame_counts[v]`: frames of video v (default all F)."""
    video_index = list(range(len(captions))) if video_index is None else list(video_index)
    per_prompt = None if frame_counts is None else [frame_counts[v] for v in video_index]
    texts = self.prompts(captions, questions, per_prompt)
    return build_batch(self.tokenizer, texts, video_index,
                       num_frames=self.config.num_video_frames,
                       tokens_per_frame=self.config.tokens_per_frame, frame_counts=frame_counts,
                       bucket=self.bucket_prompts)

  def first_token_logits(self, videos, captions: Sequence[str], questions: Sequence[str] | str,
                         video_index: Sequence[int] | None = None) -> np.ndarray:
    """fp32 `[B, vocab]` logits of the answer's first token (one forward pass, no sampling)."""
    px, counts = self._pixels(videos)
    b = self.batch(captions, questions, video_index, counts)
    # The whole batch on every process, also when the critic spans several hosts.
    return distributed.host_array(_last_logits(self.model, jnp.asarray(px),
                                               jnp.asarray(b.token_ids), jnp.asarray(b.image_slots),
                                               jnp.asarray(b.attention_mask)))

  def label_probs(self, videos, captions, questions, video_index=None,
                  labels: Sequence[str] = LABELS) -> np.ndarray:
    """`[B, len(labels)]` softmax probabilities (over the whole vocabulary) of each label's first
    token; a deterministic, differentiable-in-spirit alternative to sampling the answer."""
    ids = prompts.label_token_ids(self.tokenizer, self.template, labels)
    logits = self.first_token_logits(videos, captions, questions, video_index)
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    return np.exp(np.asarray(logp)[:, [ids[label] for label in labels]])

  def generate(self, videos, captions: Sequence[str], questions: Sequence[str] | str,
               video_index: Sequence[int] | None = None, *, max_new_tokens: int = 512,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               rng: jax.Array | int | None = None) -> list[str]:
    """Answers as text (greedy by default; `**LIFT_SAMPLING` reproduces LiFT's sampling)."""
    px, counts = self._pixels(videos)
    b = self.batch(captions, questions, video_index, counts)
    embeds = _embed(self.model, jnp.asarray(px), jnp.asarray(b.token_ids),
                    jnp.asarray(b.image_slots))
    stops = llama_lib.stop_sequences(self.tokenizer, self.stop_strings)
    out = llama_lib.generate(self.model.llm, inputs_embeds=embeds, attention_mask=b.attention_mask,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, rng=rng, stop_token_ids=stops,
                             pad_token_id=self.tokenizer.pad_token_id)
    return llama_lib.decode_texts(self.tokenizer, out, self.stop_strings)

  def ask_all(self, video, caption: str, mode: str = "generate", **kw) -> dict[str, Any]:
    """The three LiFT questions about one video (its frames encoded once, one batch of 3).

    mode "generate": answer strings; mode "logits": P(Good/Normal/Bad) arrays per question.
    """
    keys = list(prompts.QUESTION_KEYS)
    args = ([video], [caption] * 3, keys, [0, 0, 0])
    if mode == "generate":
      return dict(zip(keys, self.generate(*args, **kw)))
    if mode == "logits":
      return dict(zip(keys, self.label_probs(*args, **kw)))
    raise ValueError(f"mode must be 'generate' or 'logits', got {mode!r}")

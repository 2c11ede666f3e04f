"""Autoregressive decoding with the KV cache: one jitted prefill + `lax.while_loop` over tokens.

`generate(lm, input_ids=... | inputs_embeds=..., attention_mask=...)` takes left-padded prompts
(the last column is real for every row, as transformers wants for decoder-only generation), builds
the RoPE positions from the mask (`cumsum - 1`, as `generate` does), prefills the cache and decodes
up to `max_new_tokens` tokens inside one compiled loop that exits as soon as every row has stopped.

Sampling follows transformers' warper order: greedy when `temperature == 0`, otherwise
temperature -> top-k -> top-p (nucleus) -> categorical draw. A row stops at an EOS id or when its
newest tokens spell one of `stop_token_ids` (token sequences; `stop_sequences` turns stop strings
into them). The stop token is kept in the output and later positions hold `pad_token_id`.
`decode_texts` turns the tokens back into strings and cuts them at the stop strings, which is also
what catches a stop string the model spelled with other tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax.models.llama.modeling import LlamaForCausalLM
from lift_jax.parallel import distributed


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
  tokens: np.ndarray  # [B, max_new_tokens] int32, pad after the stop token
  lengths: np.ndarray  # [B] tokens generated, the stop token included
  stopped: np.ndarray  # [B] bool: stopped by EOS / a stop sequence (not by the length limit)


def filter_logits(logits_BV: jax.Array, temperature, top_k, top_p) -> jax.Array:
  """Temperature, then top-k (0 = off), then top-p (1 = off), as transformers' logits warpers.

  Removed entries become -inf. Ties at the top-k threshold are kept, like `TopKLogitsWarper`.
  """
  logits = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  v = logits.shape[-1]
  sorted_asc = jnp.sort(logits, axis=-1)
  k = jnp.clip(top_k, 1, v)
  kth = jnp.take_along_axis(sorted_asc, jnp.broadcast_to(v - k, logits.shape[:-1] + (1,)), -1)
  logits = jnp.where((top_k > 0) & (logits < kth), -jnp.inf, logits)
  # Nucleus: drop the low tail whose cumulative probability stays <= 1 - top_p; keep the top one.
  order = jnp.argsort(logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, -1)
  cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  remove_sorted = (cum <= 1 - top_p) & (jnp.arange(v) < v - 1)
  remove = jnp.zeros_like(remove_sorted).at[
      jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
  return jnp.where((top_p < 1.0) & remove, -jnp.inf, logits)


def _pick(logits_BV, rng, temperature, top_k, top_p, do_sample: bool):
  if not do_sample:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits_BV, temperature, top_k, top_p),
                                axis=-1).astype(jnp.int32)


# graph_updates=False: the cache is explicit and `lm` is only read; graph-mode nnx.jit would return
# its whole state as outputs, a copy of every weight per call.
@nnx.jit(static_argnames=("max_new_tokens", "do_sample"), graph_updates=False)
def _generate(lm: LlamaForCausalLM, embeds_BTD, mask_BT, rng, temperature, top_k, top_p,
              stops_MW, eos_E, pad_id, *, max_new_tokens: int, do_sample: bool):
  b, t = mask_BT.shape
  mask_BT = mask_BT.astype(bool)
  positions_BT = jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)
  cache = lm.init_cache(b, t + max_new_tokens)
  logits, cache = lm.step(embeds_BTD, mask_BT, positions_BT, cache, last_only=True)
  next_pos_B = mask_BT.sum(-1).astype(jnp.int32)
  width = stops_MW.shape[1]

  def cond(state):
    step, done = state[0], state[5]
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, logits_BV, cache, pos_B, out_BN, done_B, recent_BW, rng = state
    rng, key = jax.random.split(rng)
    token_B = _pick(logits_BV, key, temperature, top_k, top_p, do_sample)
    token_B = jnp.where(done_B, pad_id, token_B)
    out_BN = jax.lax.dynamic_update_slice(out_BN, token_B[:, None], (0, step))
    recent_BW = jnp.concatenate([recent_BW[:, 1:], token_B[:, None]], axis=1)
    # Stop sequences are right-aligned in [M, W] with -1 padding on the left.
    hit_BM = jnp.all((stops_MW[None] < 0) | (recent_BW[:, None, :] == stops_MW[None]), axis=-1)
    hit_BM &= jnp.any(stops_MW >= 0, axis=-1)[None]
    stop_B = jnp.any(token_B[:, None] == eos_E[None], axis=-1) | jnp.any(hit_BM, axis=-1)
    done_B = done_B | stop_B
    embeds = lm.embed(token_B[:, None])
    logits, cache = lm.step(embeds, jnp.ones((b, 1), bool), pos_B[:, None], cache, last_only=True)
    return (step + 1, logits[:, -1], cache, pos_B + 1, out_BN, done_B, recent_BW, rng)

  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  recent = jnp.full((b, width), -1, jnp.int32)
  state = (jnp.zeros((), jnp.int32), logits[:, -1], cache, next_pos_B, out,
           jnp.zeros((b,), bool), recent, rng)
  state = jax.lax.while_loop(cond, body, state)
  out, done = state[4], state[5]
  return out, done


def _stop_table(stop_token_ids: Sequence[Sequence[int]]) -> np.ndarray:
  stops = [list(s) for s in stop_token_ids if len(s)]
  width = max([len(s) for s in stops], default=1)
  table = np.full((max(len(stops), 1), width), -1, np.int32)
  for m, seq in enumerate(stops):
    table[m, width - len(seq):] = seq
  return table


def generate(lm: LlamaForCausalLM, input_ids=None, attention_mask=None, *, inputs_embeds=None,
             max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, rng: jax.Array | int | None = None,
             eos_token_ids: Sequence[int] | None = None,
             stop_token_ids: Sequence[Sequence[int]] = (),
             pad_token_id: int | None = None) -> GenerateOutput:
  """Greedy (temperature 0) or sampled decoding of left-padded prompts; see the module doc.

  `eos_token_ids` default to the config's; `pad_token_id` to the config's (else 0).
  """
  cfg = lm.config
  embeds = lm.embed(jnp.asarray(input_ids)) if inputs_embeds is None else jnp.asarray(inputs_embeds)
  if embeds.ndim != 3:
    raise ValueError(f"prompts must be [B, T] ids or [B, T, D] embeddings, got {embeds.shape}")
  b, t = embeds.shape[:2]
  mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask, bool)
  if mask.shape != (b, t):
    raise ValueError(f"attention_mask must be [B, T] = {(b, t)}, got {mask.shape}")
  if not mask[:, -1].all():
    raise ValueError("generate needs left-padded prompts: attention_mask[:, -1] must be 1 for "
                     "every row (pad on the left, as for transformers' decoder-only generate)")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, "
                     f"{top_p}, {top_k}")
  eos = cfg.eos_token_ids if eos_token_ids is None else tuple(eos_token_ids)
  eos_arr = np.asarray(list(eos) or [-1], np.int32)
  pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
  pad = 0 if pad is None else int(pad)
  if rng is None or isinstance(rng, int):
    rng = jax.random.key(0 if rng is None else rng)
  do_sample = temperature > 0
  out, done = _generate(lm, embeds, jnp.asarray(mask), rng, jnp.float32(temperature),
                        jnp.int32(top_k), jnp.float32(top_p), jnp.asarray(_stop_table(stop_token_ids)),
                        jnp.asarray(eos_arr), jnp.int32(pad), max_new_tokens=max_new_tokens,
                        do_sample=do_sample)
  # The whole batch on every process, also when the model spans several hosts.
  out, done = distributed.host_array(out), distributed.host_array(done)
  lengths = np.full((b,), max_new_tokens, np.int64)
  for row in range(b):
    if done[row]:  # the first stop: an EOS id or the end of a stop sequence
      lengths[row] = _first_stop(out[row], eos, stop_token_ids) + 1
  return GenerateOutput(tokens=out, lengths=lengths, stopped=done)


def _first_stop(row: np.ndarray, eos: Sequence[int], stops: Sequence[Sequence[int]]) -> int:
  for i, tok in enumerate(row.tolist()):
    if tok in eos:
      return i
    for seq in stops:
      n = len(seq)
      if n and i + 1 >= n and row[i + 1 - n: i + 1].tolist() == list(seq):
        return i
  return len(row) - 1


def stop_sequences(tokenizer, stop_strings: Sequence[str]) -> list[list[int]]:
  """Token ids of each stop string as the tokenizer spells it alone (no BOS/EOS added).

  A special token such as `</s>` or `<|im_end|>` becomes its single id.
  """
  out = []
  for s in stop_strings:
    ids = tokenizer(s, add_special_tokens=False).input_ids
    special = tokenizer.convert_tokens_to_ids(s) if s in tokenizer.get_vocab() else None
    out.append([special] if special is not None else list(ids))
  return out


def decode_texts(tokenizer, output: GenerateOutput, stop_strings: Sequence[str] = ()) -> list[str]:
  """Decoded answers, special tokens skipped, cut at the first stop string, stripped.

  VILA's run scripts do the same: decode with `skip_special_tokens=True`, `strip()`, drop the
  trailing stop string, `strip()`.
  """
  texts = []
  for row, n in zip(output.tokens, output.lengths):
    text = tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    if cuts:
      text = text[:min(cuts)]
    texts.append(text.strip())
  return texts

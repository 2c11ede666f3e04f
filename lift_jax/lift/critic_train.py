"""LiFT-Critic SFT: LoRA on the LLM of VILA, trained on LiFT-HRA to answer "<Label>. <reason>".

The recipe (paper App. B.1, LiFT's `train_critic_{13b,40b}.sh`): LoRA on every linear of the LLM
(`lora_adapters`), vision tower and projector frozen, next-token cross-entropy on the answer tokens
and the stop token only, AdamW (lr 1e-5, no weight decay) with 3 % warmup then cosine, bf16.

Samples are built as VILA's `LazySupervisedDataset` + `preprocess_v1`/`preprocess_mpt` build them:
the human turn with `<video>` removed (its leading space kept), 8 `<image>\\n` in front, the answer
right-stripped; the template's prompt with the answer (`Template.prompt(message, answer)`, which
ends with the stop string) is tokenized with `tokenize_prompt`. The loss mask is everything after
the inference prompt (`Template.prompt(message)`, what the critic sees when asked): with a
SentencePiece tokenizer that is exactly VILA's (`instruction_len - 2`) mask.

The step (`CriticTrainer`): one `jax.jit` with explicit shardings and a donated state, as
`lift.train.Trainer`: only the LoRA factors (and their AdamW moments) are in the state; the
frozen model is a separate argument. The LM head runs only at the answer positions (a few dozen
per sample instead of ~1,700), so no [B, T, vocab] logits are formed. Frames travel as uint8 and
are normalised on device (SigLIP's rescale + mean/std). Token sums are accumulated over
micro-batches, so the loss is the mean over all answer tokens of the global batch (HF's).

Evaluation (`evaluate`): label accuracy per dimension and their mean (the paper's Table 2), by
`Critic.label_probs` argmax ("logits") or by the label at the start of a greedy answer
("generate").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lift_jax.lift import lora_adapters
from lift_jax.lift import train as train_lib
from lift_jax.models.critic import prompts
from lift_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
LABELS = ("Good", "Normal", "Bad")
BATCH_KEYS = ("frames", "token_ids", "image_slots", "attention_mask", "target_pos", "target_ids")
SCORING_MODES = ("logits", "generate")


# ----------------------------------------------------------------------------- samples


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

  `frames` uint8 [F,H,W,3]; `token_ids`, `image_slots` (frame-relative; the step adds the row's
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
    from lift_jax.data.hra import text
    frames = np.asarray(ex["frames"])
    if frames.shape != (self.num_frames,) + self.image_size + (3,):
      raise ValueError(f"{text(ex['video_id'])}: frames {frames.shape} but the critic takes "
                       f"{(self.num_frames,) + self.image_size + (3,)}; rebuild the HRA dataset "
                       "with the critic's image size")
    tok = encode_sft(self.tokenizer, self.template, text(ex["user_text"]), text(ex["answer"]),
                     num_frames=self.num_frames)
    ids, slots, labels = expand_images(tok, tokens_per_frame=self.tokens_per_frame)
    n, t, a = len(ids), self.max_length, self.max_targets
    pos = np.nonzero(labels != IGNORE_INDEX)[0]
    if n > t or len(pos) > a:
      raise ValueError(f"{text(ex['video_id'])} ({text(ex['dimension'])}): {n} tokens / "
                       f"{len(pos)} answer tokens exceed max_length={t} / max_targets={a}")
    out = {"frames": frames,
           "token_ids": np.zeros(t, np.int32), "image_slots": np.full(t, -1, np.int32),
           "attention_mask": np.zeros(t, bool), "target_pos": np.zeros(a, np.int32),
           "target_ids": np.full(a, -1, np.int32)}
    out["token_ids"][:n], out["image_slots"][:n], out["attention_mask"][:n] = ids, slots, True
    out["target_pos"][:len(pos)] = pos - 1
    out["target_ids"][:len(pos)] = labels[pos]
    return out


def collate(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in BATCH_KEYS}


def make_sft_dataset(source, transform: SftTransform, *, batch_size: int, seed: int = 0,
                     num_epochs: int | None = None, process_index: int | None = None,
                     process_count: int | None = None):
  """grain pipeline: this host's shard -> shuffled each epoch (seeded) -> transform -> batches."""
  import grain

  from lift_jax.data import loaders
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  sl = loaders.host_shard(len(source), process_index, process_count)
  if sl.stop - sl.start < batch_size:
    raise ValueError(f"{sl.stop - sl.start} training example(s) on this host for a per-host "
                     f"batch of {batch_size}")
  ds = grain.MapDataset.source(source)[sl].shuffle(seed=loaders._seed(seed, 17))
  return ds.repeat(num_epochs).map(transform).batch(batch_size, drop_remainder=True)


# ----------------------------------------------------------------------------- loss


def normalize_frames(frames_BFHWC: jax.Array, image) -> jax.Array:
  """uint8 `[B,F,H,W,3]` -> float32 `[B,F,3,H,W]`: the processor's rescale and mean/std (its resize
  was done when the dataset was built)."""
  x = frames_BFHWC.astype(jnp.float32)
  if image.do_rescale:
    x = x * jnp.float32(image.rescale_factor)
  if image.do_normalize:
    x = (x - jnp.asarray(image.image_mean, jnp.float32)) / jnp.asarray(image.image_std, jnp.float32)
  return jnp.moveaxis(x, -1, 2)


def answer_logits(model, batch: dict[str, jax.Array]) -> jax.Array:
  """fp32 logits `[B, A, vocab]` at the answer positions (`target_pos`) only."""
  cfg = model.config
  frames = batch["frames"]
  b, f = frames.shape[:2]
  px = normalize_frames(frames, cfg.image)
  rel = batch["image_slots"]
  offset = (jnp.arange(b, dtype=jnp.int32) * (f * cfg.tokens_per_frame))[:, None]
  slots = jnp.where(rel >= 0, rel + offset, -1)
  embeds = model.embed_inputs(px, batch["token_ids"], slots)
  mask = batch["attention_mask"].astype(bool)
  positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
  h = model.llm.hidden_states(attention_mask=mask, position_ids=positions, inputs_embeds=embeds)
  h_BAD = jnp.take_along_axis(h, batch["target_pos"][..., None], axis=1)
  return model.llm.head(h_BAD)


def loss_terms(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over the batch's answer tokens: nll, count, correct (argmax), and the same for the
  answer's first token (the label)."""
  logits = answer_logits(model, batch)
  tgt = batch["target_ids"]
  valid = tgt >= 0
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, jnp.maximum(tgt, 0)[..., None], axis=-1)[..., 0]
  nll = jnp.where(valid, lse - picked, 0.0)
  correct = (jnp.argmax(logits, axis=-1) == tgt) & valid
  return {"nll": jnp.sum(nll), "tokens": jnp.sum(valid).astype(jnp.float32),
          "correct": jnp.sum(correct).astype(jnp.float32),
          "label_correct": jnp.sum(correct[:, 0]).astype(jnp.float32),
          "labels": jnp.sum(valid[:, 0]).astype(jnp.float32)}


# ----------------------------------------------------------------------------- trainer


@dataclasses.dataclass(frozen=True)
class SftOptimConfig:
  """HF Trainer's AdamW as LiFT ran it: lr 1e-5, wd 0, warmup ratio 0.03, cosine, clip 1.0."""

  lr: float = 1e-5
  warmup_ratio: float = 0.03
  total_steps: int = 1000
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  final_lr_fraction: float = 0.0

  @property
  def warmup_steps(self) -> int:
    return int(math.ceil(self.warmup_ratio * self.total_steps))

  def to_optim(self) -> train_lib.OptimConfig:
    return train_lib.OptimConfig(lr=self.lr, warmup_steps=self.warmup_steps,
                                 total_steps=self.total_steps, b1=self.b1, b2=self.b2,
                                 eps=self.eps, weight_decay=self.weight_decay,
                                 clip_norm=self.clip_norm,
                                 final_lr_fraction=self.final_lr_fraction)


class CriticTrainer:
  """The split critic (LoRA factors | everything else), AdamW and the jitted step on one mesh.

  `state` = {"step", "params" (LoRA factors), "opt_state", "bad_steps"}: what checkpoints hold.
  Batches: `BATCH_KEYS` arrays with a leading global batch axis (see `SftTransform`).
  """

  def __init__(self, model: nnx.Module, *, mesh: Mesh, optim: SftOptimConfig = SftOptimConfig(),
               accum_steps: int = 1, seed: int = 0, rules=mesh_lib.DEFAULT_RULES):
    if not lora_adapters.lora_modules(model):
      raise ValueError("the critic has no LoRA layers: call lora_adapters.add_lora first")
    self.mesh, self.rules = mesh, rules
    self.optim_config = optim
    self.accum_steps = accum_steps
    self.base_key = jax.random.key(seed)
    self.dropout = lora_adapters.lora_config_of(model).dropout
    self.tx = train_lib.make_optimizer(optim.to_optim())
    self.lr = train_lib.learning_rate(optim.to_optim())
    self.graphdef, params, frozen = nnx.split(model, lora_adapters.LoraParam, ...)
    self.param_shardings = nnx.to_pure_dict(mesh_lib.param_shardings(params, mesh, rules))
    self.frozen_shardings = nnx.to_pure_dict(mesh_lib.param_shardings(frozen, mesh, rules))
    self._params_template, self._frozen_template = params, frozen
    self.frozen = jax.device_put(nnx.to_pure_dict(frozen), self.frozen_shardings)
    self._initial_params = jax.device_put(nnx.to_pure_dict(params), self.param_shardings)
    self.state_shardings = self._state_shardings()
    self._jit_step = jax.jit(
        self._step, in_shardings=(self.state_shardings, self.frozen_shardings,
                                  self.batch_sharding, None),
        out_shardings=(self.state_shardings, None), donate_argnums=(0,))
    self._jit_eval = jax.jit(self._eval, in_shardings=(self.param_shardings, self.frozen_shardings,
                                                       self.batch_sharding))

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, mesh_lib.logical_to_spec(("activation_batch",), self.rules))

  def _state_shardings(self):
    return train_lib.state_shardings(self.tx, self.mesh, self.param_shardings,
                                     self._initial_params)

  def init_state(self) -> dict[str, Any]:
    return train_lib.init_state(self.tx, self._initial_params, self.state_shardings)

  def abstract_state(self) -> dict[str, Any]:
    return train_lib.abstract_state(self.init_state, self.state_shardings)

  def model(self, state: dict[str, Any] | None = None) -> nnx.Module:
    """The critic (LoRA layers in place) with the state's factors: for scoring, export, merge."""
    params, frozen = self._params_template, self._frozen_template
    nnx.replace_by_pure_dict(params, self._initial_params if state is None else state["params"])
    nnx.replace_by_pure_dict(frozen, self.frozen)
    return nnx.merge(self.graphdef, params, frozen)

  # ------------------------------------------------------------------------- step

  def _terms(self, params, frozen, batch, key):
    model = nnx.merge(self.graphdef, params, frozen)
    with lora_adapters.dropout_key(key if self.dropout > 0 else None):
      terms = loss_terms(model, batch)
    return terms["nll"], terms

  def _step(self, state, frozen, batch, key):
    key = jax.random.fold_in(key, state["step"])
    params = state["params"]
    grad_fn = jax.grad(self._terms, has_aux=True)
    a = self.accum_steps
    if a == 1:
      grads, terms = grad_fn(params, frozen, batch, key)
    else:
      # Micro-batch i takes rows i, i+a, ...: the split keeps every micro-batch's rows spread over
      # the batch-sharded devices, and the scanned axis unsharded (the contiguous split trips
      # XLA's SPMD partitioner: "slice dim size greater than dynamic slice dimension").
      spec = NamedSharding(self.mesh, PartitionSpec(
          None, *mesh_lib.logical_to_spec(("activation_batch",), self.rules)))
      micro = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(
              jnp.moveaxis(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 1, 0), spec), batch)

      def body(carry, xs):
        i, mb = xs
        g, t = grad_fn(params, frozen, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (g, t)), None

      zeros_t = {k: jnp.zeros((), jnp.float32) for k in
                 ("nll", "tokens", "correct", "label_correct", "labels")}
      (grads, terms), _ = jax.lax.scan(body, (jax.tree.map(jnp.zeros_like, params), zeros_t),
                                       (jnp.arange(a), micro))
    denom = jnp.maximum(terms["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = terms["nll"] / denom
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = self.tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {"step": state["step"] + 1, "params": train_lib.tree_where(ok, new_params, params),
                 "opt_state": train_lib.tree_where(ok, new_opt, state["opt_state"]),
                 "bad_steps": state["bad_steps"] + (~ok).astype(jnp.int32)}
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.lr(state["step"]),
               "token_accuracy": terms["correct"] / denom,
               "label_accuracy": terms["label_correct"] / jnp.maximum(terms["labels"], 1.0),
               "answer_tokens": terms["tokens"], "finite": ok}
    return new_state, metrics

  def _eval(self, params, frozen, batch):
    _, terms = self._terms(params, frozen, batch, None)
    return terms

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays sharded over the batch axes (multi-host safe)."""
    local = len(next(iter(batch.values())))
    self.check_batch(local * jax.process_count())
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(batch[k]))
            for k in BATCH_KEYS}

  def step(self, state, batch):
    if not all(isinstance(v, jax.Array) for v in batch.values()):
      batch = self.put_batch(batch)
    with mesh_lib.use_mesh(self.mesh, self.rules):
      return self._jit_step(state, self.frozen, batch, self.base_key)

  def loss(self, state, batch) -> dict[str, float]:
    """Mean answer-token loss and accuracies of a batch under `state` (no dropout, no update)."""
    if not all(isinstance(v, jax.Array) for v in batch.values()):
      batch = self.put_batch(batch)
    with mesh_lib.use_mesh(self.mesh, self.rules):
      t = jax.device_get(self._jit_eval(state["params"], self.frozen, batch))
    n = max(float(t["tokens"]), 1.0)
    return {"loss": float(t["nll"]) / n, "token_accuracy": float(t["correct"]) / n,
            "label_accuracy": float(t["label_correct"]) / max(float(t["labels"]), 1.0)}

  def check_batch(self, batch_size: int) -> None:
    mesh_lib.check_divisible(self.mesh, batch=batch_size)
    if batch_size % (self.accum_steps * math.prod(self.mesh.shape[a] for a in ("data", "fsdp"))):
      raise ValueError(f"batch {batch_size} must split into {self.accum_steps} micro-batches, "
                       "each divisible by data×fsdp")


# ----------------------------------------------------------------------------- evaluation


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
           "paper_names": {d: prompts.DIMENSIONS[d] for d in self.accuracy},
           "average": round(100 * self.average, 2), "overall": round(100 * self.overall, 2),
           "correct": dict(self.correct), "total": dict(self.total),
           "unparseable": self.unparseable}
    if with_predictions:
      out["predictions"] = list(self.predictions)
    return out


def _parse_label() -> Callable[[str], str | None]:
  try:
    from lift_jax.lift.reward import parse_label
    return parse_label
  except ImportError:  # pragma: no cover - the scoring module ships parse_label
    import re
    pat = re.compile(r"^[\W_]*(good|normal|bad)(?![A-Za-z0-9])", re.IGNORECASE)
    return lambda a: (m.group(1).capitalize() if (m := pat.match(a or "")) else None)


def evaluate(critic, source, *, mode: str = "logits", batch_size: int = 8,
             prompt_style: str = "inference", max_new_tokens: int = 64, limit: int | None = None,
             progress: bool = False) -> EvalResult:
  """Label accuracy of `critic` (a `models.critic.Critic`) on an HRA split (`open_hra(..)[split]`).

  mode "logits": argmax of `Critic.label_probs`; "generate": the label at the start of a greedy
  answer (`lift.reward.parse_label`; an answer without one counts as wrong and as unparseable).
  prompt_style "inference": `caption + question` as LiFT's run_critic asks; "train": the human
  turn as trained on (the caption after a space). The last short batch is padded with copies so
  every call has one shape.
  """
  from lift_jax.data.hra import text

  if mode not in SCORING_MODES:
    raise ValueError(f"mode must be one of {SCORING_MODES}, got {mode!r}")
  if prompt_style not in ("inference", "train"):
    raise ValueError(f"prompt_style must be 'inference' or 'train', got {prompt_style!r}")
  parse = _parse_label()
  dims = list(prompts.QUESTION_KEYS)
  result = EvalResult(mode, {d: 0 for d in dims}, {d: 0 for d in dims})
  n = len(source) if limit is None else min(limit, len(source))
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=n, desc=f"eval ({mode})", unit="rating")
  for start in range(0, n, batch_size):
    rows = [source[i] for i in range(start, min(start + batch_size, n))]
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
      preds = [parse(a) for a in answers]
    for r, pred, ans in list(zip(rows, preds, answers))[:real]:
      dim, label = text(r["dimension"]), text(r["label"])
      result.total[dim] += 1
      result.correct[dim] += int(pred == label)
      result.unparseable += int(pred is None)
      row = {"video_id": text(r["video_id"]), "dimension": dim, "label": label, "pred": pred}
      if ans is not None:
        row["answer"] = ans
      result.predictions.append(row)
    if bar is not None:
      bar.update(real)
  if bar is not None:
    bar.close()
  result.total = {d: c for d, c in result.total.items() if c}
  result.correct = {d: result.correct[d] for d in result.total}
  return result


# ----------------------------------------------------------------------------- the job


def _critic_image_size(cfg) -> tuple[int, int]:
  return (cfg.image.height, cfg.image.width)


def prepare_data(config, image_size: tuple[int, int]) -> str:
  """The HRA dataset the config names, built from `data.manual_dir` when it does not exist yet."""
  from lift_jax.data import hra

  dc = config.data
  if not dc.dir:
    raise ValueError("--config.data.dir is required: the HRA dataset (built there from "
                     "--config.data.manual_dir when missing)")
  if not os.path.isfile(os.path.join(dc.dir, "dataset_info.json")):
    if not dc.get("manual_dir"):
      raise FileNotFoundError(f"{dc.dir}: no HRA dataset; set --config.data.manual_dir to the "
                              "unpacked LiFT-HRA release to build it")
    if jax.process_index() == 0:
      report = hra.build_hra(dc.dir, manual_dir=dc.manual_dir, vidgen=dc.get("vidgen", True),
                             test_size=dc.test_size, seed=dc.get("split_seed", 0),
                             image_size=image_size, workers=dc.get("workers", 2))
      log.warning("built %s: %s", dc.dir, {k: v for k, v in report.to_json().items()
                                           if k != "skipped"})
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("hra dataset built")
  meta = hra.hra_metadata(dc.dir)
  if meta and tuple(meta.get("image_size", image_size)) != tuple(image_size):
    raise ValueError(f"{dc.dir}: frames were stored at {meta['image_size']}, the critic's "
                     f"processor takes {list(image_size)}; rebuild with the critic's size")
  return dc.dir


def make_mesh(axes: dict) -> Mesh:
  """The config's mesh; sizes without a -1 take the first devices (a one-device run on a host)."""
  from lift_jax import parallel

  devices = jax.devices()
  if axes and all(int(v) != -1 for v in axes.values()):
    devices = devices[:math.prod(int(v) for v in axes.values())]
  return parallel.make_mesh(axes, devices)


def load_for_training(config, mesh: Mesh | None):
  """(critic model with LoRA, tokenizer) from `config.critic` and `config.lora`."""
  from lift_jax.models.critic import vila

  cc = config.critic
  if not cc.path:
    raise ValueError("--config.critic.path is required: the base VILA folder (e.g. VILA1.5-13b)")
  model = vila.load_critic(cc.path, dtype=cc.dtype, param_dtype=cc.param_dtype or cc.dtype,
                           mesh=mesh, remat=cc.remat, attention_impl=cc.attention_impl,
                           template=cc.get("template"))
  tokenizer = vila.load_tokenizer(cc.path)
  lora_adapters.add_lora(model, lora_adapters.LoraConfig.from_config(config.lora),
                         seed=config.seed)
  return model, tokenizer


def run(config, workdir: str, *, progress: bool = True) -> dict[str, Any]:
  """The SFT job (configs/critic_13b_sft.py): data, critic + LoRA, steps with checkpoints and
  resume, then the PEFT adapter (and optionally the merged critic) and a test-split evaluation."""
  from lift_jax import parallel, runtime
  from lift_jax.checkpoint.manager import TrainCheckpointer
  from lift_jax.data import hra, loaders
  from lift_jax.lift import loop
  from lift_jax.models.critic import vila

  runtime.setup(config.get("compilation_cache"))
  parallel.initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh(config.mesh.to_dict())
  cfg_v = vila.vila_config(config.critic.path, template=config.critic.get("template"))
  data_dir = prepare_data(config, _critic_image_size(cfg_v))
  model, tokenizer = load_for_training(config, mesh)
  vcfg = model.config
  splits = hra.open_hra(data_dir)
  if "train" not in splits:
    raise ValueError(f"{data_dir}: no train split")
  texts = hra.hra_texts(data_dir)
  all_texts = [row for rows in texts.values() for row in rows]
  max_length, max_targets = sequence_sizes(
      tokenizer, vcfg.template, all_texts, num_frames=vcfg.num_video_frames,
      tokens_per_frame=vcfg.tokens_per_frame, multiple=config.data.get("length_multiple", 64))
  max_length = config.data.get("max_length") or max_length
  max_targets = config.data.get("max_targets") or max_targets
  transform = SftTransform(tokenizer, vcfg.template, num_frames=vcfg.num_video_frames,
                           tokens_per_frame=vcfg.tokens_per_frame, max_length=max_length,
                           max_targets=max_targets, image_size=_critic_image_size(vcfg))
  batch = config.data.batch_size
  per_host = batch // jax.process_count()
  epoch_steps = len(splits["train"]) // batch
  if epoch_steps < 1:
    raise ValueError(f"{len(splits['train'])} training examples for a global batch of {batch}")
  num_steps = config.get("num_steps") or int(config.num_epochs * epoch_steps)
  optim = SftOptimConfig(**{**config.optim.to_dict(), "total_steps": num_steps})
  trainer = CriticTrainer(model, mesh=mesh, optim=optim, accum_steps=config.accum_steps,
                          seed=config.seed)
  trainer.check_batch(batch)
  dataset = make_sft_dataset(splits["train"], transform, batch_size=per_host, seed=config.seed)
  iterator = loaders.make_iterator(dataset, num_threads=config.data.get("num_threads", 2),
                                   prefetch=config.data.get("prefetch", 2))
  checkpointer = TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
  resumed = checkpointer.latest_step()
  state = (checkpointer.restore(trainer.abstract_state(), iterator) if resumed is not None
           else trainer.init_state())
  if resumed is not None:
    log.warning("resumed from step %d", resumed)
  print(f"critic SFT: {lora_adapters.lora_param_count(model):,} LoRA parameters, "
        f"{len(splits['train'])} training ratings, {num_steps} steps of {batch} "
        f"(sequence {max_length}, {max_targets} answer slots)", flush=True)
  writer = loop.ScalarWriter(os.path.join(workdir, "tensorboard"))
  history: list[dict] = []
  t0 = time.time()
  try:
    state = loop.fit(trainer, state, iterator, num_steps=num_steps, checkpointer=checkpointer,
                     save_every=config.checkpoint_every, log_every=config.log_every,
                     writer=writer, max_bad_steps=config.max_bad_steps,
                     tokens_per_step=batch * max_length, progress=progress, history=history)
  finally:
    writer.close()
    checkpointer.close()
  final_step = int(jax.device_get(state["step"]))
  summary: dict[str, Any] = {"steps": final_step, "num_steps": num_steps,
                             "resumed_from": resumed, "seconds": round(time.time() - t0, 1),
                             "bad_steps": int(jax.device_get(state["bad_steps"])),
                             "max_length": max_length, "max_targets": max_targets,
                             "last": history[-1] if history else None}
  if final_step >= num_steps:
    trained = trainer.model(state)
    ex = config.export
    if ex.get("adapter", True):  # every process: the LoRA is gathered, process 0 writes it
      summary["adapter"] = lora_adapters.export_peft(
          trained, os.path.join(workdir, "adapter"), layout=ex.get("layout", "vila"),
          base_model=os.path.abspath(config.critic.path), overwrite=True)
    ev = config.get("eval")
    if ev and ev.get("at_end") and "test" in splits:
      critic = vila.Critic(trained, tokenizer, vcfg.template)
      with parallel.use_mesh(mesh):
        results = [evaluate(critic, splits["test"], mode=m, batch_size=ev.batch_size,
                            max_new_tokens=ev.get("max_new_tokens", 64))
                   for m in ([ev.mode] if ev.mode != "both" else list(SCORING_MODES))]
      summary["eval"] = {r.mode: r.to_json() for r in results}
    if ex.get("merged", False):
      merged = lora_adapters.merge_lora(trained)
      summary["critic"] = vila.save_critic(merged, os.path.join(workdir, "critic"),
                                           overwrite=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_history.jsonl"), "w") as f:
      f.writelines(json.dumps(h) + "\n" for h in history)
    with open(os.path.join(workdir, "train_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary

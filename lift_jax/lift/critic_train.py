"""LiFT-Critic SFT: LoRA on the LLM of VILA, trained on LiFT-HRA to answer "<Label>. <reason>".

The recipe (paper App. B.1, LiFT's `train_critic_{13b,40b}.sh`): LoRA on every linear of the LLM
(`lora_adapters`), vision tower and projector frozen, next-token cross-entropy on the answer tokens
and the stop token only, AdamW (lr 1e-5, no weight decay) with 3 % warmup then cosine, bf16.

This module is the loss (`CriticTrainer` on the shared `train_core`: only the LoRA factors and
their AdamW moments are in the state, the frozen model is a separate argument) and the job
(`run`). The LM head runs only at the answer positions (a few dozen per sample instead of
~1,700), so no [B, T, vocab] logits are formed. Frames travel as uint8 and are normalised on
device (SigLIP's rescale + mean/std). Samples are built by `data.critic_sft`; evaluation is
`lift.critic_eval`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lift_jax import files, parallel, runtime
from lift_jax.checkpoint.manager import TrainCheckpointer
from lift_jax.data import hra, loaders
from lift_jax.data.critic_sft import BATCH_KEYS, SftTransform, make_sft_dataset, sequence_sizes
from lift_jax.lift import loop, lora_adapters
from lift_jax.lift.critic_eval import SCORING_MODES, evaluate
from lift_jax.lift.train_core import OptimConfig, TrainerCore
from lift_jax.models.critic import vila
from lift_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)


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

  def to_optim(self) -> OptimConfig:
    return OptimConfig(lr=self.lr, warmup_steps=self.warmup_steps,
                                 total_steps=self.total_steps, b1=self.b1, b2=self.b2,
                                 eps=self.eps, weight_decay=self.weight_decay,
                                 clip_norm=self.clip_norm,
                                 final_lr_fraction=self.final_lr_fraction)


class CriticTrainer(TrainerCore):
  """The split critic (LoRA factors | everything else), AdamW and the jitted step on one mesh.

  `state` = {"step", "params" (LoRA factors), "opt_state", "bad_steps"}: what checkpoints hold.
  Batches: `critic_sft.BATCH_KEYS` arrays with a leading global batch axis (`SftTransform`).
  Token sums are accumulated over micro-batches, so the loss is the mean over all answer tokens
  of the global batch (HF's).
  """

  batch_keys = BATCH_KEYS

  def __init__(self, model: nnx.Module, *, mesh: Mesh, optim: SftOptimConfig = SftOptimConfig(),
               accum_steps: int = 1, seed: int = 0, rules=mesh_lib.DEFAULT_RULES):
    if not lora_adapters.lora_modules(model):
      raise ValueError("the critic has no LoRA layers: call lora_adapters.add_lora first")
    self.optim_config = optim
    self.dropout = lora_adapters.lora_config_of(model).dropout
    super().__init__(model, lora_adapters.LoraParam, mesh=mesh, optim=optim.to_optim(),
                     accum_steps=accum_steps, seed=seed, rules=rules)
    self._jit_eval = jax.jit(self._eval, in_shardings=(self.param_shardings, self.frozen_shardings,
                                                       self.batch_sharding))

  def model(self, state: dict[str, Any] | None = None) -> nnx.Module:
    """The critic (LoRA layers in place) with the state's factors: for scoring, export, merge."""
    return self.merged(state)

  # ------------------------------------------------------------------------- loss

  def objective(self, model, batch, key):
    with lora_adapters.dropout_key(key if self.dropout > 0 else None):
      terms = loss_terms(model, batch)
    return terms["nll"], terms

  def finish(self, grads, terms, batch):
    denom = jnp.maximum(terms["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    return grads, {"loss": terms["nll"] / denom, "token_accuracy": terms["correct"] / denom,
                   "label_accuracy": terms["label_correct"] / jnp.maximum(terms["labels"], 1.0),
                   "answer_tokens": terms["tokens"]}

  def _eval(self, params, frozen, batch):
    return self._objective(params, frozen, batch, None)[1]

  def loss(self, state, batch) -> dict[str, float]:
    """Mean answer-token loss and accuracies of a batch under `state` (no dropout, no update)."""
    batch = self.on_mesh(batch)
    with mesh_lib.use_mesh(self.mesh, self.rules):
      t = jax.device_get(self._jit_eval(state["params"], self.frozen, batch))
    n = max(float(t["tokens"]), 1.0)
    return {"loss": float(t["nll"]) / n, "token_accuracy": float(t["correct"]) / n,
            "label_accuracy": float(t["label_correct"]) / max(float(t["labels"]), 1.0)}


# ----------------------------------------------------------------------------- the job


def _critic_image_size(cfg) -> tuple[int, int]:
  return (cfg.image.height, cfg.image.width)


def prepare_data(config, image_size: tuple[int, int]) -> str:
  """The HRA dataset the config names, built from `data.manual_dir` when it does not exist yet."""
  dc = config.data
  if not dc.dir:
    raise ValueError("--config.data.dir is required: the HRA dataset (built there from "
                     "--config.data.manual_dir when missing)")
  if not files.isfile(files.join(dc.dir, "dataset_info.json")):
    if not dc.get("manual_dir"):
      raise FileNotFoundError(f"{dc.dir}: no HRA dataset; set --config.data.manual_dir to the "
                              "unpacked LiFT-HRA release to build it")
    if jax.process_index() == 0:
      report = hra.build_hra(dc.dir, manual_dir=dc.manual_dir, vidgen=dc.get("vidgen", True),
                             test_size=dc.test_size, seed=dc.get("split_seed", 0),
                             image_size=image_size, workers=dc.get("workers", 2))
      log.warning("built %s: %s", dc.dir, {k: v for k, v in report.to_json().items()
                                           if k != "skipped"})
    parallel.barrier("hra dataset built")
  meta = hra.hra_metadata(dc.dir)
  if meta and tuple(meta.get("image_size", image_size)) != tuple(image_size):
    raise ValueError(f"{dc.dir}: frames were stored at {meta['image_size']}, the critic's "
                     f"processor takes {list(image_size)}; rebuild with the critic's size")
  return dc.dir


def load_for_training(config, mesh: Mesh | None):
  """(critic model with LoRA, tokenizer) from `config.critic` and `config.lora`."""
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
  runtime.setup(config.get("compilation_cache"))
  parallel.initialize_distributed()
  files.makedirs(workdir)
  mesh = parallel.mesh_from_config(config.mesh.to_dict())
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
  checkpointer = TrainCheckpointer(files.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
  resumed = checkpointer.latest_step()
  state = (checkpointer.restore(trainer.abstract_state(), iterator) if resumed is not None
           else trainer.init_state())
  if resumed is not None:
    log.warning("resumed from step %d", resumed)
  print(f"critic SFT: {lora_adapters.lora_param_count(model):,} LoRA parameters, "
        f"{len(splits['train'])} training ratings, {num_steps} steps of {batch} "
        f"(sequence {max_length}, {max_targets} answer slots)", flush=True)
  writer = loop.ScalarWriter(files.join(workdir, "tensorboard"))
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
          trained, files.join(workdir, "adapter"), layout=ex.get("layout", "vila"),
          base_model=files.absolute(config.critic.path), overwrite=True)
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
      summary["critic"] = vila.save_critic(merged, files.join(workdir, "critic"),
                                           overwrite=True)
  loop.write_results(workdir, history, summary)
  return summary

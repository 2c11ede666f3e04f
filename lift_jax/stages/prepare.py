r"""The prepare stage: decode each video once, encode it (VAE latent mean/logvar, T5 embeddings of
its caption) and write TFDS ArrayRecord shards for training.

  lift-jax prepare --manifest work/videos/manifest.jsonl --scores work/scores.jsonl \
      [--real real.jsonl --config.real_weight=1.0] --model CogVideoX-2b --out work/prepared \
      [--config.num_frames=49 --config.height=480 --config.width=720 --config.dtype=bfloat16]
  lift-jax prepare --data_json dataset/data.json [--video_root dataset] \
      --model CogVideoX-2b --out work/prepared        # LiFT's own fine-tuning list

Real videos weigh λ (--config.real_weight, stored as their reward; the trainer reads it from
there). --export_data_json writes the joined list in LiFT's data.json layout (for its official
trainer). Clips longer than num_frames take every (n // num_frames)-th frame (LiFT's trainer;
--config.frame_sampling=first takes the first ones).

--model is a diffusers pipeline root (vae/, text_encoder/, tokenizer/); --vae, --t5 and
--tokenizer point at the parts separately (diffusers folders or converted checkpoints).
A corrupt, missing or too-short video is skipped, named in the log and counted in the summary
(and in <out>/prepare_log.json). The output is written under a temporary name and renamed at the
end; an existing --out is an error unless --overwrite.

Several processes each encode their share of the videos (by position in the joined records) on
their own devices and leave them in a part file beside --out; after a barrier process 0 writes the
one dataset from the parts in record order, so it equals a single process's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pickle
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from lift_jax import files, parallel, runtime
from lift_jax.data import generated, lift_files, records as records_lib, video
from lift_jax.models.cogvideox.vae_params import load_vae
from lift_jax.models.t5.params import load_encoder
from lift_jax.models.t5.tokenizer import MAX_LENGTH, CogVideoXTokenizer
from lift_jax.stages import cli


@dataclasses.dataclass
class Encoders:
  """What preparation needs from the models (tests pass small stand-ins)."""
  encode_video: Callable[[np.ndarray], tuple]      # [B,3,F,H,W] in [-1,1] -> (mean, logvar)
  encode_text: Callable[[Sequence[str]], np.ndarray]  # prompts -> [B, max_sequence_length, 4096]
  scaling_factor: float


def load_encoders(vae_path: str, t5_path: str, tokenizer_path: str, *, dtype: str,
                  text_batch: int, vae_tiling: bool, max_sequence_length: int = MAX_LENGTH,
                  devices=None) -> Encoders:
  """The real VAE and T5, each call jitted at one shape (text batches are padded to text_batch).

  A batch of clips is split over `devices` (default: this process's own) along the batch, the VAE
  replicated on each: a batch not a multiple of their number is padded with copies of its last
  clip."""
  devices = list(devices or jax.local_devices())
  vae = load_vae(vae_path, dtype=dtype)
  if vae_tiling:
    vae.enable_tiling()
  batch_sharding = None
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    nnx.update(vae, jax.device_put(nnx.state(vae), NamedSharding(mesh, P())))
    batch_sharding = NamedSharding(mesh, P("data"))
  tokenizer = CogVideoXTokenizer.from_pretrained(tokenizer_path, max_length=max_sequence_length)
  t5 = load_encoder(t5_path, dtype=dtype)
  graphdef, state = nnx.split(t5)
  t5_fn = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids).astype(jnp.float32))

  def encode_video(x):
    n = x.shape[0]
    if batch_sharding is None:
      mean, logvar = vae.encode(jax.device_put(x, devices[0]))
      return np.asarray(mean), np.asarray(logvar)
    pad = (-n) % len(devices)
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    mean, logvar = vae.encode(jax.device_put(x, batch_sharding))
    return np.asarray(mean)[:n], np.asarray(logvar)[:n]

  def encode_text(prompts):
    ids = np.asarray(tokenizer.encode(list(prompts)))
    n = ids.shape[0]
    pad = (-n) % text_batch
    if pad:
      ids = np.concatenate([ids, np.repeat(ids[-1:], pad, axis=0)])
    return np.asarray(t5_fn(state, jnp.asarray(ids)))[:n]

  return Encoders(encode_video, encode_text, float(vae.config.scaling_factor))


def default_config() -> ml_collections.ConfigDict:
  """The clip, encoder and storage settings (override as --config.<field>=value)."""
  return ml_collections.ConfigDict(dict(
      real_weight=1.0,              # λ: the real videos' loss weight
      dtype="float32",              # compute dtype of the VAE and T5 (float32/bfloat16/float16)
      vae_tiling=True,              # encode in spatial tiles as LiFT's trainer does
      num_frames=49, height=480, width=720,
      frame_sampling="stride",      # LiFT's stride rule, the first N frames, or N uniformly spread
      resize="squash",              # squash to HxW (LiFT's trainer) or scale and center-crop
      latent_dtype="float32", embed_dtype="bfloat16",
      text_batch=8,                 # captions per T5 call
      max_sequence_length=MAX_LENGTH,  # T5 tokens a caption: the generator's own setting
      video_batch=0,                # clips per VAE call, split over this process's devices
                                    # (0: one clip per local device)
      compilation_cache=ml_collections.config_dict.placeholder(str)))


def _check(cfg) -> None:
  for field, allowed in (("dtype", ("float32", "bfloat16", "float16")),
                         ("frame_sampling", video.FRAME_SAMPLING), ("resize", video.RESIZE_MODES),
                         ("latent_dtype", generated.DTYPES), ("embed_dtype", generated.DTYPES)):
    if cfg[field] not in allowed:
      raise ValueError(f"config {field}={cfg[field]!r}: expected one of {tuple(allowed)}")


def _encode_parts(records, out: str, encoders: Encoders, clip, cfg, progress: bool) -> str:
  """This process's share of `records` encoded into its part file; returns the parts folder."""
  parts = f"{out}.parts"
  mine = parallel.process_share(list(enumerate(records)))
  report = generated.PrepareReport()
  position = {(r.is_real, r.path): n for n, r in mine}
  encoded = [(position[(ex["is_real"], ex["path"])], split, ex) for split, ex in
             generated.encode_records([r for _, r in mine], encoders.encode_video,
                                      encoders.encode_text, clip=clip,
                                      latent_dtype=cfg.latent_dtype, embed_dtype=cfg.embed_dtype,
                                      text_batch=cfg.text_batch, report=report,
                                      video_batch=_video_batch(cfg))]
  files.makedirs(parts)
  name = files.join(parts, f"part-{jax.process_index():05d}-of-{jax.process_count():05d}.pkl")
  with files.atomic_file(name, own=True) as tmp, open(tmp, "wb") as f:
    pickle.dump({"examples": encoded, "skipped": report.skipped}, f)
  return parts


def _write_from_parts(parts: str, out: str, *, scaling_factor: float, clip, cfg,
                      metadata: dict, overwrite: bool) -> generated.PrepareReport:
  """Process 0: every part's examples, in record order, into one dataset (as one process would)."""
  t0 = time.time()
  report = generated.PrepareReport()
  encoded = []
  for name in files.listdir(parts):
    with files.open_file(files.join(parts, name), "rb") as f:
      part = pickle.load(f)
    encoded += part["examples"]
    report.skipped += part["skipped"]
  if not encoded:
    raise ValueError(f"no readable video; nothing written to {out}. Skipped: "
                     f"{report.skipped[:5]}")
  encoded.sort(key=lambda item: item[0])
  by_split = {s: [ex for _, split, ex in encoded if split == s] for s in generated.SPLITS}
  by_split = {s: v for s, v in by_split.items() if v}
  for s, v in by_split.items():
    report.written[s] = len(v)
  first = encoded[0][2]
  meta = {"scaling_factor": float(scaling_factor), "clip": dataclasses.asdict(clip),
          "latent_dtype": cfg.latent_dtype, "embed_dtype": cfg.embed_dtype, **metadata}

  def log_text():
    report.seconds = time.time() - t0
    return json.dumps({**report.to_json(), "metadata": meta}, indent=2)

  generated.write_dataset(out, by_split, latent_shape=first["latent_mean"].shape,
                          text_shape=first["text_embeds"].shape, latent_dtype=cfg.latent_dtype,
                          embed_dtype=cfg.embed_dtype, metadata=meta,
                          extra_files={generated.PREPARE_LOG: log_text}, overwrite=overwrite)
  return report


def _video_batch(cfg) -> int:
  return cfg.video_batch or jax.local_device_count()


def join_inputs(cfg, manifest: str | None, scores: str | None, real: str | None,
                data_json: str | None, video_root: str | None) -> records_lib.JoinResult:
  """The records to prepare: manifest + scores (+ real videos at λ), or LiFT's data.json."""
  if data_json:
    if manifest or scores or real:
      raise ValueError("--data_json replaces --manifest/--scores/--real: pass one or the other")
    joined = records_lib.JoinResult(lift_files.read_data_json(data_json, video_root))
    if not joined.records:
      raise ValueError(f"no records: {data_json} is an empty list")
    return joined
  if not (manifest and scores):
    raise ValueError("pass --manifest and --scores (the loop's files) or --data_json (LiFT's)")
  joined = records_lib.join_records(manifest, scores, real, real_weight=cfg.real_weight)
  if not joined.records:
    raise ValueError(f"no records: nothing in {manifest} has a score in {scores}")
  return joined


def run(cfg, manifest: str | None, scores: str | None, out: str, *, real: str | None = None,
        model: str | None = None, vae: str | None = None, t5: str | None = None,
        tokenizer: str | None = None, overwrite: bool = False, progress: bool = True,
        data_json: str | None = None, video_root: str | None = None,
        export_data_json: str | None = None, encoders: Encoders | None = None) -> dict:
  """Joins `manifest` and `scores` (and `real`), or reads LiFT's `data_json`, encodes every video
  once and writes the dataset to `out`; returns the summary. `encoders` replaces the real models
  (tests)."""
  _check(cfg)
  runtime.setup(cfg.compilation_cache)
  out = files.absolute(out)
  if files.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  joined = join_inputs(cfg, manifest, scores, real, data_json, video_root)
  if export_data_json and jax.process_index() == 0:
    lift_files.write_data_json(export_data_json, joined.records)
  if encoders is None:
    vae_path, t5_path, tok_path = vae or model, t5 or model, tokenizer or t5 or model
    if not (vae_path and t5_path and tok_path):
      raise ValueError("pass --model (a pipeline root) or all of --vae, --t5 and --tokenizer")
    # Models on a URI are copied to local disk once (their readers take local files).
    vae_path, t5_path, tok_path = map(files.local_mirror, (vae_path, t5_path, tok_path))
    encoders = load_encoders(vae_path, t5_path, tok_path, dtype=cfg.dtype,
                             text_batch=cfg.text_batch, vae_tiling=cfg.vae_tiling,
                             max_sequence_length=cfg.max_sequence_length)
  clip = generated.ClipOptions(cfg.num_frames, cfg.height, cfg.width, cfg.frame_sampling,
                               cfg.resize)
  metadata = {"manifest": manifest and files.absolute(manifest),
              "scores": scores and files.absolute(scores),
              "data_json": data_json and files.absolute(data_json),
              "real": real and files.absolute(real), "real_weight": cfg.real_weight,
              "unscored": len(joined.unscored)}
  if jax.process_count() == 1:
    report = generated.prepare_reward_dataset(
        joined.records, out, encode_video=encoders.encode_video,
        encode_text=encoders.encode_text, scaling_factor=encoders.scaling_factor, clip=clip,
        latent_dtype=cfg.latent_dtype, embed_dtype=cfg.embed_dtype, text_batch=cfg.text_batch,
        video_batch=_video_batch(cfg),
        overwrite=overwrite, progress=progress, metadata=metadata)
  else:
    parts = _encode_parts(joined.records, out, encoders, clip, cfg, progress)
    parallel.barrier(f"prepare-encoded:{out}")
    try:
      if jax.process_index() == 0:
        report = _write_from_parts(parts, out, scaling_factor=encoders.scaling_factor, clip=clip,
                                   cfg=cfg, metadata=metadata, overwrite=overwrite)
        files.rmtree(parts)
    finally:
      parallel.barrier(f"prepare-written:{out}")
    if jax.process_index() != 0:
      log = json.loads(files.read_text(files.join(out, generated.PREPARE_LOG)))
      report = generated.PrepareReport(**{k: v for k, v in log.items()
                                          if k in ("written", "skipped")})
  summary = {"out": out, **report.to_json(), "unscored": len(joined.unscored),
             "unknown_scores": len(joined.unknown)}
  summary["skipped"] = [f"{s['path']}: {s['reason']}" for s in report.skipped]
  return summary


def define_flags() -> dict:
  return dict(
      config=config_flags.DEFINE_config_dict("config", default_config(),
                                             "clip, encoder and storage settings"),
      manifest=flags.DEFINE_string("manifest", None, "generate's manifest.jsonl "
                                   "({prompt, seed, path})"),
      scores=flags.DEFINE_string("scores", None, "score's scores.jsonl ({path, labels, reward})"),
      data_json=flags.DEFINE_string("data_json", None, "instead of --manifest/--scores: LiFT's "
                                    "fine-tuning list, a JSON list of {video, caption, score}"),
      video_root=flags.DEFINE_string("video_root", None, "folder --data_json's videos are under "
                                     "(default: its folder)"),
      export_data_json=flags.DEFINE_string("export_data_json", None, "also write the joined "
                                           "records as LiFT's data.json here"),
      real=flags.DEFINE_string("real", None, "optional real videos, JSONL of {path, caption}"),
      out=flags.DEFINE_string("out", None, "output dataset folder", required=True),
      overwrite=flags.DEFINE_bool("overwrite", False, "replace an existing --out"),
      model=flags.DEFINE_string("model", None, "diffusers pipeline root "
                                "(vae/, text_encoder/, tokenizer/)"),
      vae=flags.DEFINE_string("vae", None, "VAE folder or converted checkpoint "
                              "(default: --model)"),
      t5=flags.DEFINE_string("t5", None, "T5 encoder folder or converted checkpoint "
                             "(default: --model)"),
      tokenizer=flags.DEFINE_string("tokenizer", None, "tokenizer folder "
                                    "(default: --t5, then --model)"),
      progress=flags.DEFINE_bool("progress", True, "show a progress bar"))


def stage(f: dict, encoders: Encoders | None = None) -> dict:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  return run(f["config"].value, f["manifest"].value, f["scores"].value, f["out"].value,
             real=f["real"].value, model=f["model"].value, vae=f["vae"].value, t5=f["t5"].value,
             tokenizer=f["tokenizer"].value, overwrite=f["overwrite"].value,
             progress=f["progress"].value, data_json=f["data_json"].value,
             video_root=f["video_root"].value, export_data_json=f["export_data_json"].value,
             encoders=encoders)


def main(argv=None, encoders: Encoders | None = None) -> None:
  """The command; `encoders` replaces the real models (tests)."""
  cli.main(define_flags, functools.partial(stage, encoders=encoders), argv,
           errors=(FileExistsError,))


if __name__ == "__main__":
  main()

#!/usr/bin/env python
r"""Prepare the reward dataset: decode each video once, encode it (VAE latent mean/logvar, T5
embeddings of its caption) and write TFDS ArrayRecord shards for training.

  python tools/prepare_data.py --manifest work/videos/manifest.jsonl --scores work/scores.jsonl \
      [--real real.jsonl --real_weight 1.0] --model CogVideoX-2b --out work/prepared
  python tools/prepare_data.py --data_json dataset/data.json [--video_root dataset] \
      --model CogVideoX-2b --out work/prepared        # LiFT's own fine-tuning list

Real videos weigh λ (--real_weight, stored as their reward; the trainer reads it from there).
--export_data_json writes the joined list in LiFT's data.json layout (for its official trainer).
Clips longer than --num_frames take every (n // num_frames)-th frame (LiFT's trainer; "first"
takes the first ones).

--model is a diffusers pipeline root (vae/, text_encoder/, tokenizer/); --vae, --t5 and
--tokenizer point at the parts separately (diffusers folders or converted checkpoints).
A corrupt, missing or too-short video is skipped, named in the log and counted in the summary
(and in <out>/prepare_log.json). The output is written under a temporary name and renamed at the
end; an existing --out is an error unless --overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from lift_jax import runtime  # noqa: E402
from lift_jax.checkpoint.safetensors import CheckpointError  # noqa: E402
from lift_jax.data import generated, lift_files, records as records_lib, video  # noqa: E402


@dataclasses.dataclass
class Encoders:
  """What preparation needs from the models (tests pass small stand-ins)."""
  encode_video: Callable[[np.ndarray], tuple]      # [B,3,F,H,W] in [-1,1] -> (mean, logvar)
  encode_text: Callable[[Sequence[str]], np.ndarray]  # prompts -> [B, 226, 4096]
  scaling_factor: float


def load_encoders(vae_path: str, t5_path: str, tokenizer_path: str, *, dtype: str,
                  text_batch: int, vae_tiling: bool) -> Encoders:
  """The real VAE and T5, each call jitted at one shape (text batches are padded to text_batch)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from lift_jax.models.cogvideox.vae_params import load_vae
  from lift_jax.models.t5.params import load_encoder
  from lift_jax.models.t5.tokenizer import CogVideoXTokenizer

  vae = load_vae(vae_path, dtype=dtype)
  if vae_tiling:
    vae.enable_tiling()
  tokenizer = CogVideoXTokenizer.from_pretrained(tokenizer_path)
  t5 = load_encoder(t5_path, dtype=dtype)
  graphdef, state = nnx.split(t5)
  t5_fn = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids).astype(jnp.float32))

  def encode_video(x):
    mean, logvar = vae.encode(jnp.asarray(x))
    return np.asarray(mean), np.asarray(logvar)

  def encode_text(prompts):
    ids = np.asarray(tokenizer.encode(list(prompts)))
    n = ids.shape[0]
    pad = (-n) % text_batch
    if pad:
      ids = np.concatenate([ids, np.repeat(ids[-1:], pad, axis=0)])
    return np.asarray(t5_fn(state, jnp.asarray(ids)))[:n]

  return Encoders(encode_video, encode_text, float(vae.config.scaling_factor))


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--manifest", default=None, help="generate's manifest.jsonl ({prompt, seed, path})")
  p.add_argument("--scores", default=None, help="score's scores.jsonl ({path, labels, reward})")
  p.add_argument("--data_json", default=None, help="instead of --manifest/--scores: LiFT's "
                 "fine-tuning list, a JSON list of {video, caption, score}")
  p.add_argument("--video_root", default=None, help="folder --data_json's videos are under "
                 "(default: its folder)")
  p.add_argument("--export_data_json", default=None,
                 help="also write the joined records as LiFT's data.json here")
  p.add_argument("--real", default=None, help="optional real videos, JSONL of {path, caption}")
  p.add_argument("--real_weight", type=float, default=1.0, help="λ: the real videos' loss weight")
  p.add_argument("--out", required=True, help="output dataset folder")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--model", default=None, help="diffusers pipeline root (vae/, text_encoder/, tokenizer/)")
  p.add_argument("--vae", default=None, help="VAE folder or converted checkpoint (default: --model)")
  p.add_argument("--t5", default=None, help="T5 encoder folder or converted checkpoint (default: --model)")
  p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --t5, then --model)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                 help="compute dtype of the VAE and T5")
  p.add_argument("--vae_tiling", action=argparse.BooleanOptionalAction, default=True,
                 help="encode in spatial tiles as LiFT's trainer does (diffusers enable_tiling)")
  p.add_argument("--num_frames", type=int, default=49)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=720)
  p.add_argument("--frame_sampling", default="stride", choices=video.FRAME_SAMPLING,
                 help="LiFT's stride rule (every n // N-th frame of a longer clip), the first N "
                 "frames, or N uniformly spread")
  p.add_argument("--resize", default="squash", choices=video.RESIZE_MODES,
                 help="squash to HxW (LiFT's trainer) or scale and center-crop")
  p.add_argument("--latent_dtype", default="float32", choices=generated.DTYPES)
  p.add_argument("--embed_dtype", default="bfloat16", choices=generated.DTYPES)
  p.add_argument("--text_batch", type=int, default=8, help="captions per T5 call")
  p.add_argument("--no_progress", action="store_true")
  p.add_argument("--compilation_cache", default=None,
                 help="JAX persistent compilation cache dir ('' disables)")
  return p


def join_inputs(args) -> records_lib.JoinResult:
  """The records to prepare: manifest + scores (+ real videos at λ), or LiFT's data.json."""
  if args.data_json:
    if args.manifest or args.scores or args.real:
      raise ValueError("--data_json replaces --manifest/--scores/--real: pass one or the other")
    joined = records_lib.JoinResult(lift_files.read_data_json(args.data_json, args.video_root))
    if not joined.records:
      raise ValueError(f"no records: {args.data_json} is an empty list")
    return joined
  if not (args.manifest and args.scores):
    raise ValueError("pass --manifest and --scores (the loop's files) or --data_json (LiFT's)")
  joined = records_lib.join_records(args.manifest, args.scores, args.real,
                                    real_weight=args.real_weight)
  if not joined.records:
    raise ValueError(f"no records: nothing in {args.manifest} has a score in {args.scores}")
  return joined


def main(argv=None, encoders: Encoders | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  runtime.setup(args.compilation_cache)
  out = os.path.abspath(args.out)
  if os.path.exists(out) and not args.overwrite:
    print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
    return 2
  try:
    joined = join_inputs(args)
    if args.export_data_json:
      lift_files.write_data_json(args.export_data_json, joined.records)
    if encoders is None:
      vae_path = args.vae or args.model
      t5_path = args.t5 or args.model
      tok_path = args.tokenizer or args.t5 or args.model
      if not (vae_path and t5_path and tok_path):
        raise ValueError("pass --model (a pipeline root) or all of --vae, --t5 and --tokenizer")
      encoders = load_encoders(vae_path, t5_path, tok_path, dtype=args.dtype,
                               text_batch=args.text_batch, vae_tiling=args.vae_tiling)
    clip = generated.ClipOptions(args.num_frames, args.height, args.width, args.frame_sampling,
                                 args.resize)
    report = generated.prepare_reward_dataset(
        joined.records, out, encode_video=encoders.encode_video,
        encode_text=encoders.encode_text, scaling_factor=encoders.scaling_factor, clip=clip,
        latent_dtype=args.latent_dtype, embed_dtype=args.embed_dtype,
        text_batch=args.text_batch, overwrite=args.overwrite, progress=not args.no_progress,
        metadata={"manifest": args.manifest and os.path.abspath(args.manifest),
                  "scores": args.scores and os.path.abspath(args.scores),
                  "data_json": args.data_json and os.path.abspath(args.data_json),
                  "real": args.real and os.path.abspath(args.real),
                  "real_weight": args.real_weight, "unscored": len(joined.unscored)})
  except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  summary = {"out": out, **report.to_json(), "unscored": len(joined.unscored),
             "unknown_scores": len(joined.unknown)}
  summary["skipped"] = [f"{s['path']}: {s['reason']}" for s in report.skipped]
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

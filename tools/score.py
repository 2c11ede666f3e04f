#!/usr/bin/env python
r"""Score generated videos with the LiFT-Critic: manifest.jsonl -> scores.jsonl.

  python tools/score.py --config=configs/critic_13b.py --manifest work/videos/manifest.jsonl \
      --out work/scores.jsonl --critic ckpt/VILA1.5-13b --lora ckpt/LiFT-Critic-13b-lora-v1.5 \
      [--mode generate|logits] [--config.batch_videos=8] [--config.sampling.max_new_tokens=64]

Each manifest row ({"prompt", "seed", "path", ...}) gives one scores.jsonl row: path, prompt,
labels / scores per dimension, reward (Good 0.9 / Normal 0.2 / Bad 0.05, weighted mean), mode, and
the answers and reasons (generate) or label probabilities (logits).

Rows are appended and flushed a batch at a time, so a killed run started again with the same
command scores only what is left (--overwrite starts over). Videos that cannot be decoded are
skipped, counted and named in the summary; videos with an answer no label can be read from go to
<out stem>.unparsed.jsonl (config reward.unparseable=bad scores them as Bad instead). The summary
(counts, mean reward, label counts per dimension) is printed and written to <out stem>.summary.json.
"""

from __future__ import annotations

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/critic_13b.py", "critic config file")
_MANIFEST = flags.DEFINE_string("manifest", None, "generate's manifest.jsonl", required=True)
_OUT = flags.DEFINE_string("out", None, "scores.jsonl to write (or resume)", required=True)
_CRITIC = flags.DEFINE_string("critic", None, "VILA folder or converted critic "
                              "(default: config.critic.path)")
_LORA = flags.DEFINE_string("lora", None, "PEFT LoRA adapter folder (default: config.critic.lora)")
_MODE = flags.DEFINE_enum("mode", None, ["generate", "logits"], "default: config.mode")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "start over instead of resuming --out")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def make_mesh(axes: dict):
  """The config's mesh, or None on one device (no sharding annotations to pay for)."""
  import jax

  from lift_jax import parallel

  devices = jax.devices()
  if all(int(v) != -1 for v in axes.values()):
    devices = devices[:math.prod(int(v) for v in axes.values())]
  mesh = parallel.make_mesh(axes, devices)
  return mesh if mesh.size > 1 else None


def plan_mesh(cfg, path: str, mode: str):
  """`parallelism=auto`: replicas if the critic fits one device, else tensor parallelism
  (`parallel.serving`); returns (mesh or None, batch_videos, the plan's report)."""
  import jax
  import numpy as np
  from flax import nnx

  from lift_jax import parallel
  from lift_jax.lift.memory import device_capacity
  from lift_jax.models.critic.vila import VilaCritic, vila_config
  from lift_jax.parallel import serving

  c = cfg.critic
  vc = vila_config(path, template=c.template, dtype=c.dtype, param_dtype=c.param_dtype or c.dtype,
                   remat=c.remat, attention_impl=c.attention_impl)
  prompt = serving.bucket_length(vc.num_video_frames * vc.tokens_per_frame + 256)
  new_tokens = int(cfg.sampling.max_new_tokens) if mode == "generate" else 1
  plan = serving.plan_decoder(
      serving.model_bytes(lambda: VilaCritic(vc, rngs=nnx.Rngs(0))), vc.llm,
      rows=3 * cfg.batch_videos, tokens=prompt + new_tokens, itemsize=np.dtype(c.dtype).itemsize,
      num_devices=jax.device_count(), capacity_bytes=device_capacity())
  batch_videos = serving.whole_rows(int(cfg.batch_videos), plan.axes["data"], 3)
  mesh = parallel.make_mesh(plan.axes)
  report = plan.report("critic") + f"; batch_videos {batch_videos} ({3 * batch_videos} prompts)"
  return (mesh if mesh.size > 1 else None), batch_videos, report


def run(cfg, manifest: str, out: str, *, critic_path: str | None = None, lora: str | None = None,
        mode: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
  """Loads the critic the config describes and scores `manifest` into `out`; the summary."""
  import contextlib

  from lift_jax import parallel, runtime
  from lift_jax.lift import reward as reward_lib
  from lift_jax.models.critic import scoring
  from lift_jax.models.critic.vila import Critic

  runtime.setup(cfg.get("compilation_cache"))
  path = critic_path or cfg.critic.path
  if not path:
    raise ValueError("no critic: pass --critic (a VILA folder or converted critic) or set "
                     "--config.critic.path")
  mode = mode or cfg.mode
  rewards = reward_lib.RewardConfig.from_config(cfg.reward)
  sampling = scoring.sampling_settings(cfg.sampling)  # fail on bad settings before loading
  batch_videos = cfg.batch_videos
  if cfg.get("parallelism", "mesh") == "auto":
    mesh, batch_videos, report = plan_mesh(cfg, path, mode)
    print(report, file=sys.stderr, flush=True)  # stdout carries the JSON summary
  else:
    mesh = make_mesh(cfg.mesh.to_dict())
  critic = Critic.load(path, lora or cfg.critic.lora, template=cfg.critic.template,
                       dtype=cfg.critic.dtype, param_dtype=cfg.critic.param_dtype,
                       attention_impl=cfg.critic.attention_impl, remat=cfg.critic.remat,
                       mesh=mesh, progress=progress)
  scorer = scoring.Scorer(critic, mode, reward_config=rewards, sampling=sampling,
                          batch_videos=batch_videos, seed=cfg.seed)
  with parallel.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    summary = scoring.score_manifest(scorer, manifest, out, overwrite=overwrite, progress=progress,
                                     read_workers=cfg.get("read_workers", 2))
  summary["critic"] = {"path": os.path.abspath(path), "lora": lora or cfg.critic.lora,
                       "template": critic.template.name}
  return summary


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lift_jax.checkpoint.safetensors import CheckpointError

  try:
    summary = run(_CONFIG.value, _MANIFEST.value, _OUT.value, critic_path=_CRITIC.value,
                  lora=_LORA.value, mode=_MODE.value, overwrite=_OVERWRITE.value,
                  progress=_PROGRESS.value)
  except (CheckpointError, FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
  brief = {k: v for k, v in summary.items() if k != "this_run"}
  print(json.dumps(brief, indent=2, ensure_ascii=False))
  if summary["unparseable_videos"] or summary["unreadable"]:
    print(f"note: {summary['unreadable']} unreadable video(s) (listed in "
          f"{summary['summary_file']}), {summary['unparseable_videos']} with unparseable answers "
          f"(in {summary['unparsed_file']})", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)

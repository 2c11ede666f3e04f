"""Does the demo's tiny critic learn the demo's rater? The demo's rate and critic_sft stages on a
synthetic world that stands in for the demo generator's videos (issue 14).

  python tests/tools/critic_world.py --out /tmp/cw --seed 0 [--videos 8 --prompts 10
      --test-size 60 --critic-seed 0] [--override lora.r=8 ...] [--assets field=value ...]

The world: `lift_jax.demo.world.World` (what the demo's "pretrained" base makes), decoded as the
readable VAE decodes it (pixel = 0.5 x latent colour, a latent cell an 8x8 block, latent frames
0 | 1-4 | 5-8 of 9 frames).

Then, as configs/demo.py runs them: `python -m lift_jax.demo.rate --hra` on the videos and the
critic_sft stage's own command line (its overrides, `--override`s appended) on a tiny critic made
by `demo.assets.write_critic` (DEFAULTS, `--assets` overrides). Prints, per question, the
held-out accuracy against the majority class of the held-out labels, and the stage's wall time;
writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lift_jax.data import video as video_lib  # noqa: E402
from lift_jax.demo import assets  # noqa: E402
from lift_jax.demo.world import World  # noqa: E402
from lift_jax.lift.report import majority_baseline  # noqa: E402

GAIN = 0.5  # the readable VAE's pixel = GAIN x latent


def _prompts(n: int) -> list[str]:
  out = []
  for name in ("demo_train.txt", "demo_eval.txt"):
    with open(os.path.join(ROOT, "configs", "prompts", name), encoding="utf-8") as f:
      out += [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
  if n > len(out):
    raise ValueError(f"{n} prompts asked, {len(out)} demo prompts")
  return out[:n]


def sample_video(rng: np.random.Generator) -> np.ndarray:
  """Pixels in [-1, 1], `[3, 9, 16, 16]` (the generate stage's float layout)."""
  latent = World().sample(rng, 1, (3, 3, 2, 2), scaling_factor=1.0)[0].transpose(1, 0, 2, 3)
  frames = np.concatenate([latent[:, :1]] + [latent[:, 1:2]] * 4 + [latent[:, 2:3]] * 4, axis=1)
  pixels = np.repeat(np.repeat(frames, 8, axis=2), 8, axis=3)
  return np.clip(GAIN * pixels, -1.0, 1.0).astype(np.float32)


def write_world(out: str, seed: int, prompts: list[str], per_prompt: int) -> str:
  rng = np.random.default_rng(seed)
  rows = []
  for p, prompt in enumerate(prompts):
    for k in range(per_prompt):
      i = p * per_prompt + k
      rel = f"videos/{i:05d}.mp4"
      video_lib.write_video(os.path.join(out, rel), sample_video(rng))
      rows.append({"prompt": prompt, "seed": seed * 100000 + i, "path": rel, "index": i,
                   "prompt_index": p, "num_frames": 9, "height": 16, "width": 16, "fps": 8})
  manifest = os.path.join(out, "manifest.jsonl")
  with open(manifest, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return manifest


def make_critic(out: str, asset_overrides: dict, seed: int) -> str:
  cfg = assets.resolve_config(asset_overrides)
  dst = os.path.join(out, "critic")
  assets.write_critic(dst, cfg, seed, os.path.join(out, ".critic_work"))
  return dst


def critic_sft_args(extra: list[str]) -> tuple[str, list[str]]:
  """(module, args) of configs/demo.py's critic_sft stage, with `extra` overrides appended."""
  path = os.path.join(ROOT, "configs", "demo.py")
  spec = importlib.util.spec_from_file_location("demo_cfg", path)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  stage = next(s for s in demo.get_config().extra_stages if s["name"] == "critic_sft")
  return stage["module"], list(stage["args"]) + [f"--config.{o}" for o in extra]


def _run(cmd: list[str], log: str) -> float:
  t0 = time.time()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  with open(log, "w") as f:
    code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
  if code:
    sys.exit(f"{' '.join(cmd[:4])} failed ({code}); see {log}")
  return time.time() - t0


def _parse_assets(items: list[str]) -> dict:
  """["critic.num_video_frames=3", ...] -> nested dict (JSON values)."""
  out: dict = {}
  for item in items:
    key, _, value = item.partition("=")
    node = out
    *parents, leaf = key.split(".")
    for k in parents:
      node = node.setdefault(k, {})
    try:
      node[leaf] = json.loads(value)
    except json.JSONDecodeError:
      node[leaf] = value
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0, help="the world's sample (and the critic's init)")
  p.add_argument("--critic-seed", type=int, default=None, help="SFT seed (default: --seed)")
  p.add_argument("--prompts", type=int, default=10)
  p.add_argument("--videos", type=int, default=8, help="videos a prompt")
  p.add_argument("--test-size", type=int, default=60, help="held-out ratings")
  p.add_argument("--override", action="append", default=[], help="critic_sft field=value")
  p.add_argument("--assets", action="append", default=[], help="demo assets field=value")
  a = p.parse_args()
  out = os.path.abspath(a.out)
  world = os.path.join(out, "world")
  manifest = write_world(world, a.seed, _prompts(a.prompts), a.videos)
  critic = make_critic(out, _parse_assets(a.assets), a.seed)
  rate_dir = os.path.join(out, "rate")
  t_rate = _run([sys.executable, "-m", "lift_jax.demo.rate", f"--manifest=train={manifest}",
                 f"--out={rate_dir}", "--hra"], os.path.join(out, "rate.log"))
  sft_dir = os.path.join(out, "critic_sft")
  module, args = critic_sft_args([f"data.test_size={a.test_size}",
                                  f"seed={a.seed if a.critic_seed is None else a.critic_seed}"]
                                 + a.override)
  args = [x.replace("{dir}", sft_dir).replace("{critic}", critic)
          .replace("{workdir}/rate", rate_dir) for x in args]
  t_sft = _run([sys.executable, "-m", f"lift_jax.stages.{module}"] + args,
               os.path.join(out, "critic_sft.log"))
  with open(os.path.join(sft_dir, "train_summary.json")) as f:
    summary = json.load(f)
  acc = summary["eval"]["logits"]["accuracy"]
  base = majority_baseline(os.path.join(sft_dir, "hra", "texts.json"))
  with open(os.path.join(rate_dir, "summary.json")) as f:
    labels = json.load(f)["sets"]["train"]["labels"]
  result = {"seed": a.seed, "overrides": a.override, "assets": a.assets,
            "rate_s": round(t_rate, 1), "critic_sft_s": round(t_sft, 1),
            "train_s": summary.get("seconds"), "last": summary.get("last"),
            "labels": labels, "questions": {
                d: {"accuracy": acc[d], "majority": round(100 * base[d]["share"], 2),
                    "n": base[d]["n"], "margin": round(acc[d] - 100 * base[d]["share"], 2)}
                for d in acc}}
  with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"seed {a.seed}: critic_sft {t_sft:.1f} s (train {summary.get('seconds')} s)")
  for d, q in result["questions"].items():
    print(f"  {d:22s} held-out {q['accuracy']:5.1f} %  majority {q['majority']:5.1f} %  "
          f"margin {q['margin']:+6.1f}  (n {q['n']})")


if __name__ == "__main__":
  main()

#!/usr/bin/env python
"""One-shot accelerator benchmark: ours vs diffusers + torch on the card at hand, in one command.

  python bench/device_suite.py --out DIR            # full size, <= 8 min on one H100
  python bench/device_suite.py --small --out DIR    # every section at tiny shapes (CPU, tests)

Each section runs in its own process under its own time cap (JAX and torch never share a
process, so neither holds GPU memory the other needs); the whole run keeps to --budget seconds,
skipping what would not fit and saying so. DIR/results.json is rewritten after every section
(and holds a timed-out section's finished parts); DIR/log.txt has the sections' output.
See bench/README.md for the sections, their caps and the device command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

# (section, framework, cap in seconds at full size), in the order they run: the comparisons the
# issue asks for first, then batch 2 and 5B with whatever time is left.
SECTIONS = (
    ("env", "jax", 60),
    ("attention", "jax", 75),
    ("train", "jax", 200),
    ("train_torch", "torch", 90),
    ("generate", "jax", 90),
    ("generate_torch", "torch", 60),
    ("vae", "jax", 150),
    ("vae_torch", "torch", 60),
    ("train_batch2", "jax", 120),
    ("generate_5b", "jax", 100),
    ("generate_5b_torch", "torch", 60),
)
SMALL_CAP = 120  # per section with --small (a smoke run on shared CPUs: generous, not a target)
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
SMALL_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
MIN_START = {False: 25, True: 3}  # seconds a section needs left to be worth starting
# (ours, theirs, key path to a median in ms) for the ratios in the summary.
RATIOS = {
    "train_step": ("train", "train_torch", ("step", "median_ms")),
    "denoising_step_2b": ("generate", "generate_torch", ("denoising_step", "median_ms")),
    "denoising_step_5b": ("generate_5b", "generate_5b_torch", ("denoising_step", "median_ms")),
    "vae_decode": ("vae", "vae_torch", ("decode", "median_ms")),
}


def make_plan(small: bool, remat: str = "full") -> dict:
  """Shapes and model configs for every section; the configs are diffusers dicts made by our
  config classes, so both frameworks build the same architecture."""
  sys.path.insert(0, ROOT)
  from lift_jax.layers.remat import REMAT_POLICIES
  from lift_jax.models import cogvideox  # imports JAX but touches no device

  if remat not in REMAT_POLICIES:
    raise SystemExit(f"--remat {remat!r}: not a policy of lift_jax.layers.remat "
                     f"({', '.join(REMAT_POLICIES)})")

  if small:
    tiny = dict(num_layers=2, num_attention_heads=2, attention_head_dim=32, text_embed_dim=64,
                time_embed_dim=32, max_text_seq_length=16, sample_height=8, sample_width=12,
                sample_frames=9)
    models = {"2b": cogvideox.CogVideoXConfig.cogvideox_2b(**tiny),
              "5b": cogvideox.CogVideoXConfig.cogvideox_5b(**tiny)}
    vae = cogvideox.CogVideoXVAEConfig.cogvideox_2b(block_out_channels=(8, 8, 8, 8),
                                                    layers_per_block=1, norm_num_groups=4)
    shapes = dict(matmul=256, attention=[[1, 256, 2, 64], [1, 256, 3, 64]],
                  attention_check=128, latents=[3, 16, 8, 12], text_len=16, reps=2,
                  train_steps=2, sample_steps=2, sample_reps=1, vae_latents=[1, 16, 2, 4, 2],
                  vae_tile=[24, 24], vae_reps=1)
  else:
    models = {"2b": cogvideox.CogVideoXConfig.cogvideox_2b(),
              "5b": cogvideox.CogVideoXConfig.cogvideox_5b()}
    vae = cogvideox.CogVideoXVAEConfig.cogvideox_2b()
    # 49 frames at 480x720: 13 latent frames of 60x90, 226 text tokens (17,776 tokens in all).
    shapes = dict(matmul=8192, attention=[[1, 17776, 30, 64], [1, 17776, 48, 64]],
                  attention_check=4096, latents=[13, 16, 60, 90], text_len=226, reps=5,
                  train_steps=5, sample_steps=3, sample_reps=2, vae_latents=[1, 16, 13, 60, 90],
                  vae_tile=None, vae_reps=2)
  return {"small": small, "shapes": shapes, "dtype": "float32" if small else "bfloat16",
          "remat": remat,
          "models": {k: v.to_diffusers_config() for k, v in models.items()},
          "vae": vae.to_diffusers_config()}


# ----------------------------------------------------------------------------- sections


def run_sections(names: list[str], plan_path: str, part_dir: str) -> int:
  """Child process: runs sections one after another, each recording into part_dir/NAME.json as
  it goes; an error in one is recorded and the next still runs."""
  sys.path[:0] = [ROOT, BENCH]
  from suite_common import Recorder, forbidden_modules, load_plan

  plan = load_plan(plan_path)
  frameworks = {n: f for n, f, _ in SECTIONS}
  failed = 0
  for name in names:
    rec = Recorder(os.path.join(part_dir, f"{name}.json"))
    rec.flush()
    try:
      if frameworks[name] == "jax":
        import suite_jax as module
        module.setup()
      else:
        import suite_torch as module
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
          module.SECTIONS[name](rec, plan)
        finally:  # e.g. an attention kernel falling back: worth seeing beside the figures
          messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught
                                        if not issubclass(w.category, QUIET_WARNINGS)))
          if messages:
            rec.results["warnings"] = [m[:500] for m in messages[:10]]
      rec.status = "ok"
      rec.put("forbidden_imports", forbidden_modules(sys.modules))
    except Exception as err:  # recorded; the parent reports it
      failed += 1
      rec.status = "error"
      rec.error = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"
      rec.flush()
  return 1 if failed else 0


# ----------------------------------------------------------------------------- the suite


def _child_env(framework: str, work: str, small: bool) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, BENCH, env.get("PYTHONPATH")) if p)
  env.setdefault("PYTHONUNBUFFERED", "1")
  if framework == "jax":
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    env["LIFT_JAX_COMPILATION_CACHE"] = os.path.join(work, "jax_cache")  # fresh: real compiles
    if small:  # the smoke run checks code paths, not CPU speed: compile at half the cost
      env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *SMALL_XLA_FLAGS]).strip()
  else:
    env["JAX_PLATFORMS"] = "cpu"  # the torch sections must not let JAX take the GPU
  return env


def _write(path: str, data: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1)
  os.replace(tmp, path)


def _ratios(sections: dict) -> dict:
  out = {}
  for key, (ours, theirs, path) in RATIOS.items():
    try:
      a = sections[ours]["results"][path[0]][path[1]]
      b = sections[theirs]["results"][path[0]][path[1]]
      out[key] = {"ours_ms": a, "diffusers_ms": b, "speedup_diffusers_over_ours": b / a}
    except (KeyError, TypeError, ZeroDivisionError):
      continue
  return out


def _headline(results: dict) -> str:
  """The figures worth seeing in the command's output (all of them are in results.json)."""
  out = []
  if "matmul_bf16" in results:
    out.append(f"matmul {results['matmul_bf16']['tflops']:.0f} TFLOP/s")
  for key, value in results.items():
    if isinstance(value, dict) and "forward_backward" in value:
      out.append(f"{key}: fwd {value['forward']['median_ms']:.1f} ms, fwd+bwd "
                 f"{value['forward_backward']['median_ms']:.1f} ms")
  for key in ("step", "denoising_step", "decode"):
    if key in results:
      r = results[key]
      mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
      out.append(f"{key} {r['median_ms']:.1f} ms{mfu}")
  if results.get("peak_memory_gib") is not None:
    out.append(f"peak {results['peak_memory_gib']:.1f} GiB")
  return "; ".join(out)


def _groups(names: list[str], small: bool) -> list[list[str]]:
  """One process a section on the device (memory isolation, one cap each); with --small one
  process a framework, since starting torch and JAX costs more than the tiny sections."""
  if not small:
    return [[n] for n in names]
  frameworks = {n: f for n, f, _ in SECTIONS}
  return [g for g in ([n for n in names if frameworks[n] == fw] for fw in ("jax", "torch")) if g]


def _collect(name: str, part: str, group_status: str, cap: float) -> dict:
  try:
    with open(part) as f:
      done = json.load(f)
  except (OSError, ValueError):
    return {"status": "skipped" if group_status == "timeout" else "error",
            "error": f"not reached: its process {group_status} (cap {cap:.0f}s); see log.txt"}
  entry = {"status": done["status"], "wall_s": done["wall_s"], "results": done["results"]}
  if done["status"] == "running":
    entry.update(status="timeout" if group_status == "timeout" else "error",
                 error=(f"stopped at its {cap:.0f}s cap; results hold what finished"
                        if group_status == "timeout" else "the process died; see log.txt"))
  elif done["error"]:
    entry["error"] = done["error"]
  return entry


def run_suite(out_dir: str, small: bool, budget: float, only: list[str] | None,
              remat: str = "full") -> dict:
  os.makedirs(out_dir, exist_ok=True)
  results_path, log_path = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "log.txt")
  work = tempfile.mkdtemp(prefix="device_suite_")
  try:  # the plan, the sections' partial files and the compilation cache
    plan = make_plan(small, remat)
    plan_path = os.path.join(work, "plan.json")
    _write(plan_path, plan)
    caps = {n: (SMALL_CAP if small else c) for n, _, c in SECTIONS}
    frameworks = {n: f for n, f, _ in SECTIONS}
    names = [n for n, _, _ in SECTIONS if not only or n in only]
    start = time.perf_counter()
    report = {"suite": {"small": small, "budget_s": budget,
                        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                        "shapes": plan["shapes"], "dtype": plan["dtype"],
                        "remat": plan["remat"]},
              "sections": {}, "ratios": {}}
    with open(log_path, "a") as log:
      for group in _groups(names, small):
        left = budget - (time.perf_counter() - start)
        cap = min(sum(caps[n] for n in group), left)
        if left < MIN_START[small]:
          entries = {n: {"status": "skipped", "error": f"time budget: {left:.0f}s of "
                                                       f"{budget:.0f}s left"} for n in group}
        else:
          log.write(f"\n===== {', '.join(group)} (cap {cap:.0f}s)\n")
          log.flush()
          try:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--section", ",".join(group),
                 "--plan", plan_path, "--part-dir", work], stdout=log, stderr=subprocess.STDOUT,
                env=_child_env(frameworks[group[0]], work, small), timeout=cap, cwd=ROOT)
            group_status = "finished" if proc.returncode in (0, 1) else f"exited {proc.returncode}"
          except subprocess.TimeoutExpired:
            group_status = "timeout"
          entries = {n: _collect(n, os.path.join(work, f"{n}.json"), group_status, cap)
                     for n in group}
        for n in group:
          report["sections"][n] = {"framework": frameworks[n], "cap_s": round(cap), **entries[n]}
          entry = report["sections"][n]
          detail = (entry["error"].splitlines()[0][:150] if entry.get("error")
                    else _headline(entry.get("results") or {}))
          print(f"{n:18s} {entry['status']:8s} {entry.get('wall_s', 0):7.1f}s  {detail}",
                flush=True)
        report["sections"] = {n: report["sections"][n] for n in names if n in report["sections"]}
        report["ratios"] = _ratios(report["sections"])
        report["suite"]["elapsed_s"] = round(time.perf_counter() - start, 2)
        _write(results_path, report)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", help="folder for results.json and log.txt")
  parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds for the whole suite (default 470, --small 600)")
  parser.add_argument("--only", nargs="*", help="run only these sections")
  parser.add_argument("--remat", default="full",
                      help="remat policy of the JAX train sections (layers.remat; default full)")
  parser.add_argument("--section", help=argparse.SUPPRESS)
  parser.add_argument("--plan", help=argparse.SUPPRESS)
  parser.add_argument("--part-dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.section:
    sys.exit(run_sections(args.section.split(","), args.plan, args.part_dir))
  if not args.out:
    parser.error("--out DIR is required")
  budget = args.budget or (600.0 if args.small else 470.0)
  report = run_suite(args.out, args.small, budget, args.only, args.remat)
  for key, r in report["ratios"].items():
    print(f"{key}: ours {r['ours_ms']:.1f} ms, diffusers {r['diffusers_ms']:.1f} ms, "
          f"diffusers/ours {r['speedup_diffusers_over_ours']:.2f}x")
  bad = [n for n, e in report["sections"].items() if e["status"] != "ok"]
  print(f"results: {os.path.join(args.out, 'results.json')}"
        + (f"; not ok: {', '.join(bad)}" if bad else "; all sections ok"))


if __name__ == "__main__":
  main()

"""The one-shot accelerator benchmark cannot rot: `--small` runs every section on CPU."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(ROOT, "bench", "device_suite.py")


def _suite_module():
  spec = importlib.util.spec_from_file_location("device_suite", SUITE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_small_suite_runs_every_section(tmp_path):
  out = tmp_path / "suite"
  proc = subprocess.run([sys.executable, SUITE, "--small", "--out", str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
  assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
  report = json.loads((out / "results.json").read_text())
  names = [name for name, _, _ in _suite_module().SECTIONS]
  assert list(report["sections"]) == names
  for name, entry in report["sections"].items():
    assert entry["status"] == "ok", (name, entry.get("error"), log[-3000:])
    assert entry["results"] and "error" not in entry, name
    assert entry["results"]["forbidden_imports"] == [], name  # no grain, TFDS, video IO
  sections = {n: e["results"] for n, e in report["sections"].items()}
  assert sections["env"]["matmul_bf16"]["tflops"] > 0
  for shape in ("1x256x2x64", "1x256x3x64"):
    assert sections["attention"][shape]["forward_backward"]["tflops"] > 0
  assert sections["attention"]["agreement"]["xla_bf16_vs_fp32_rel_err"] < 2e-2
  for train in ("train", "train_batch2"):
    step = sections[train]["step"]
    assert step["finite"] and step["tokens_per_s"] > 0 and step["median_ms"] > 0
    assert sections[train]["memory_analysis_gib"]["total"] > 0
  assert sections["train_batch2"]["setup"]["batch"] == 2
  for gen in ("generate", "generate_5b", "generate_torch", "generate_5b_torch"):
    assert sections[gen]["video_50_steps_s"] > 0
  assert sections["vae"]["video_shape"] == sections["vae_torch"]["video_shape"]
  assert set(report["ratios"]) == {"train_step", "denoising_step_2b", "denoising_step_5b",
                                   "vae_decode"}


def test_budget_and_caps_are_reported(tmp_path):
  suite = _suite_module()
  report = suite.run_suite(str(tmp_path), small=True, budget=0.0, only=["env", "train_torch"])
  for name in ("env", "train_torch"):
    assert report["sections"][name]["status"] == "skipped"
    assert "time budget" in report["sections"][name]["error"]
  assert json.loads((tmp_path / "results.json").read_text())["sections"]["env"]["status"] == \
      "skipped"
  # A section stopped at its cap keeps what it had recorded.
  part = tmp_path / "train.json"
  part.write_text(json.dumps({"status": "running", "wall_s": 9.0, "error": None,
                              "results": {"compile_s": 3.0}}))
  entry = suite._collect("train", str(part), "timeout", 150)
  assert entry["status"] == "timeout" and entry["results"] == {"compile_s": 3.0}
  assert "150s cap" in entry["error"]
  assert suite._collect("vae", str(tmp_path / "missing.json"), "timeout", 150)["status"] == \
      "skipped"

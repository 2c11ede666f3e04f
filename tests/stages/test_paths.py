"""Stages against a non-local path scheme: `gs://` mapped onto a temporary folder for the test
(tests/stages/gcs.py); the files land there and nowhere else."""

import json
import os

import numpy as np
import pytest

from lift_jax import files
from lift_jax.data import generated, records, video
from lift_jax.stages import cli, prepare
from tests.data.test_prepare_data import stand_in_encoders
from tests.stages.gcs import gcs  # noqa: F401  (fixture)


def test_files_on_the_mapped_store(gcs):  # noqa: F811
  files.write_json("gs://b/x/a.json", {"a": 1})
  assert (gcs / "b" / "x" / "a.json").is_file() and files.read_json("gs://b/x/a.json") == {"a": 1}
  with files.atomic_directory("gs://b/out") as tmp:
    assert tmp.startswith("gs://b/.out.tmp-")
    files.write_json(files.join(tmp, "c.json"), {})
  assert sorted(os.listdir(gcs / "b")) == ["out", "x"]  # the temporary folder renamed
  files.append_lines("gs://b/m.jsonl", ["1"])
  files.append_lines("gs://b/m.jsonl", ["2"])
  assert (gcs / "b" / "m.jsonl").read_text() == "1\n2\n"
  assert records.resolve("v.mp4", "gs://b/w/manifest.jsonl") == "gs://b/w/v.mp4"
  assert files.relpath("gs://b/w/videos/v.mp4", "gs://b/w") == "videos/v.mp4"
  assert files.absolute("gs://b/w") == "gs://b/w"


def _write_inputs(root: str) -> None:
  """generate's and score's outputs under `root` (a gs:// folder): 3 videos and their rows."""
  rng = np.random.default_rng(0)
  manifest, scores = [], []
  for i in range(3):
    video.write_video(f"{root}/videos/v{i}.mp4",
                      rng.integers(0, 255, (9, 16, 24, 3), dtype=np.uint8))
    manifest.append({"prompt": f"prompt {i}", "seed": i, "path": f"videos/v{i}.mp4"})
    scores.append({"path": f"videos/v{i}.mp4", "reward": 0.3 + 0.1 * i,
                   "labels": {"a": "Good", "b": "Good" if i == 0 else "Bad"}})
  records.write_jsonl(f"{root}/manifest.jsonl", manifest)
  records.write_jsonl(f"{root}/scores.jsonl", scores)


def test_prepare_stage_reads_and_writes_gs_paths(gcs, capsys):  # noqa: F811
  _write_inputs("gs://bucket/work")
  enc, calls = stand_in_encoders()
  with pytest.raises(SystemExit) as exit_:
    prepare.main(["prepare", "--manifest=gs://bucket/work/manifest.jsonl",
                  "--scores=gs://bucket/work/scores.jsonl", "--out=gs://bucket/work/prepared",
                  "--export_data_json=gs://bucket/work/data.json", "--config.num_frames=9",
                  "--config.height=16", "--config.width=24", "--noprogress",
                  "--config.compilation_cache="], encoders=enc)
  assert exit_.value.code in (0, None)
  summary = json.loads(capsys.readouterr().out)
  assert summary["out"] == "gs://bucket/work/prepared"
  assert summary["written"] == {"synthetic": 3, "real": 0} and summary["num_skipped"] == 0
  assert calls["video"] == 3
  local = gcs / "bucket" / "work"
  assert sorted(os.listdir(local)) == ["data.json", "manifest.jsonl", "prepared", "scores.jsonl",
                                       "videos"]
  assert (local / "prepared" / "dataset_info.json").is_file()
  assert (local / "prepared" / generated.PREPARE_LOG).is_file()
  exported = json.loads((local / "data.json").read_text())
  assert [r["video"] for r in exported] == [f"gs://bucket/work/videos/v{i}.mp4" for i in range(3)]
  # Read back through the same scheme: the examples are the stand-in's output on each video.
  src = generated.open_dataset("gs://bucket/work/prepared")
  assert generated.dataset_metadata("gs://bucket/work/prepared")["scaling_factor"] == 0.7
  for i in range(3):
    ex = src["synthetic"][i]
    assert ex["path"].decode() == f"gs://bucket/work/videos/v{i}.mp4"
    clip = video.load_clip(str(local / "videos" / f"v{i}.mp4"), num_frames=9, height=16,
                           width=24)
    np.testing.assert_allclose(ex["latent_mean"], enc.encode_video(clip[None])[0][0], atol=1e-6)


def test_report_stage_on_a_gs_workdir(gcs, capsys):  # noqa: F811
  """`lift-jax report --workdir gs://...`: the loop's layout read from the store, the page
  written there."""
  w = "gs://bucket/run"
  for name, rewards in (("eval_base", (0.05, 0.2)), ("eval_tuned", (0.9, 0.62))):
    _write_inputs(f"{w}/{name}/generate")
    files.makedirs(f"{w}/{name}/score")
    records.write_jsonl(f"{w}/{name}/score/scores.jsonl", [
        {"path": f"../generate/videos/v{i}.mp4", "reward": r, "labels": {"a": "Good"}}
        for i, r in enumerate(rewards)])
  records.write_jsonl(f"{w}/round1/train/train_history.jsonl",
                      [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
  files.write_json(f"{w}/config.json", {"rounds": 1, "marker": "from-the-store"})
  with pytest.raises(SystemExit) as exit_:
    cli.lift_jax(["lift-jax", "report", f"--workdir={w}"])
  assert exit_.value.code in (0, None)
  summary = json.loads(capsys.readouterr().out)
  assert summary["report"] == f"{w}/report.html" and summary["missing"] == []
  page = (gcs / "bucket" / "run" / "report.html").read_text()
  assert "mean reward 0.125 before, 0.760 after" in page
  assert "from-the-store" in page and "Training" in page

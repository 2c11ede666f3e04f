"""The demo's rater: its measures, its curve, its reasons, and the LiFT-HRA files it writes."""

import json
import os

import numpy as np
import pytest

from lift_jax.data import hra
from lift_jax.data import video as video_lib
from lift_jax.demo import rate, rater
from lift_jax.models.critic import vocabulary


def _clip(level, warm=0.0, jump=0.0, frames=9):
  """uint8 [F,8,12,3]: grey `level`, red +warm / blue -warm, every other frame +jump."""
  x = np.full((frames, 8, 12, 3), level, np.float64)
  x[..., 0] += warm
  x[..., 2] -= warm
  x[1::2] += jump
  return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def test_measures_read_what_they_say():
  assert rater.brightness(rater.to_unit(_clip(0.6))) == pytest.approx(0.6, abs=2e-3)
  assert rater.warmth(rater.to_unit(_clip(0.5, warm=0.1))) == pytest.approx(0.2, abs=4e-3)
  assert rater.flicker(rater.to_unit(_clip(0.5))) == 0.0
  assert rater.flicker(rater.to_unit(_clip(0.4, jump=0.2))) == pytest.approx(0.2, abs=4e-3)
  assert rater.light_of("A fox at dawn.") == 1
  assert rater.light_of("A fox under the moon.") == -1
  assert rater.light_of("A fox.") == 0 and rater.light_of("A snowy dawn.") == 0


def test_curve_from_calibration_and_one_reason_per_label():
  levels = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
  videos = [_clip(v) for v in levels]
  r = rater.Rater.calibrate(videos, ["A fox at dawn."] * len(videos))
  labels = [r.rate(v, "A fox at dawn.")["fidelity issues"][0] for v in videos]
  assert labels == ["Bad", "Bad", "Normal", "Normal", "Good", "Good"]
  # A warm palette is Good for a warm caption and Bad for a cold one, same thresholds.
  warm = _clip(0.5, warm=0.2)
  assert r.rate(warm, "A fox at dawn.")["semantic consistency"][0] == "Good"
  assert r.rate(warm, "A fox at night.")["semantic consistency"][0] == "Bad"
  for rule in rater.RULES:
    assert set(rule.reasons) == set(vocabulary.LABELS)
    assert all(s.endswith(".") and s.count(".") == 1 for s in rule.reasons.values())


def test_rater_round_trips_through_its_file(tmp_path):
  videos = [_clip(v, warm=w) for v, w in ((0.3, 0.0), (0.5, 0.1), (0.7, -0.1), (0.4, 0.05))]
  r = rater.Rater.calibrate(videos, ["A fox at dusk."] * 4)
  r.save(str(tmp_path / "rater.json"))
  again = rater.Rater.load(str(tmp_path / "rater.json"))
  for v in videos:
    assert again.rate(v, "A fox at dusk.") == r.rate(v, "A fox at dusk.")
  with pytest.raises(ValueError, match="calibration needs"):
    rater.Rater.calibrate(videos[:2], ["x"] * 2)


def test_rate_stage_writes_scores_and_an_hra_release_the_builder_reads(tmp_path):
  gen = tmp_path / "gen"
  os.makedirs(gen / "videos")
  rows = []
  for i, level in enumerate((0.3, 0.45, 0.6, 0.75)):
    path = f"videos/{i:05d}.mp4"
    video_lib.write_video(str(gen / path), _clip(level, warm=0.05 * i, jump=0.02 * i), fps=8)
    rows.append({"prompt": f"A fox number {i} at sunset.", "seed": i, "path": path})
  (gen / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "rate"
  assert rate.main([f"--manifest=train={gen}/manifest.jsonl", f"--out={out}", "--hra"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["sets"]["train"]["videos"] == 4
  scores = [json.loads(x) for x in (out / "train" / "scores.jsonl").read_text().splitlines()]
  assert [s["prompt"] for s in scores] == [r["prompt"] for r in rows]
  for s in scores:
    assert s["mode"] == "rater" and set(s["labels"]) == set(hra.dimension_keys())
    assert s["reward"] == pytest.approx(np.mean(list(s["scores"].values())))
  # The release parses with the HRA reader: one entry per (video, question), real questions.
  (src,) = hra.find_sources(str(out), vidgen=False)
  entries = hra.read_source(src)
  assert len(entries) == 12
  assert {e.dimension for e in entries} == set(hra.dimension_keys())
  first = [e for e in entries if e.video == "videos/00000.mp4"]
  assert {e.caption for e in first} == {rows[0]["prompt"]}
  assert {(e.dimension, e.label) for e in first} == set(scores[0]["labels"].items())
  assert all(os.path.isfile(os.path.join(src.video_root, e.video)) for e in entries)
  # Later sets are graded with the saved thresholds, not a new curve.
  again = tmp_path / "again"
  assert rate.main([f"--rater={out}/rater.json", f"--out={again}",
                    f"--manifest=b={gen}/manifest.jsonl"]) == 0
  assert [json.loads(x)["labels"] for x in (again / "b" / "scores.jsonl").read_text()
          .splitlines()] == [s["labels"] for s in scores]

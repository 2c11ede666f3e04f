"""tools/score.py end to end: a tiny forced critic (a VILA folder), real mp4 files, one corrupt;
scores.jsonl, the summary, resuming, unparseable answers, and the command line itself."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lift_jax.data import records
from lift_jax.stages import score as score_stage
from lift_jax.data.video import write_video
from tests.models.test_scoring import answer_chain, random_videos, write_forced_critic
from tests.stages.gcs import gcs  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
  return score_stage


def _config(**over):
  sys.path.insert(0, ROOT)
  from configs import critic_13b
  cfg = critic_13b.get_config()
  cfg.critic.dtype = "float32"
  cfg.sampling.temperature = 0.0
  cfg.sampling.max_new_tokens = 6
  cfg.batch_videos = 2
  cfg.mesh.fsdp = 1  # one device: no mesh
  cfg.compilation_cache = ""
  for k, v in over.items():
    setattr(cfg, k, v)
  return cfg


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  root = tmp_path_factory.mktemp("score")
  bad = write_forced_critic(root / "VILA1.5-13b-bad", answer_chain("Bad"))
  garbage = write_forced_critic(root / "VILA1.5-13b-garbage", answer_chain(None))
  videos = root / "work" / "videos"
  rows = []
  for k, clip in enumerate(random_videos(3, frames=9)):
    write_video(str(videos / f"{k:03d}.mp4"), clip, fps=8)
    rows.append({"prompt": f"A panda eats bamboo, take {k}.", "seed": k, "path": f"{k:03d}.mp4"})
  (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
  rows.insert(1, {"prompt": "A broken file.", "seed": 7, "path": "corrupt.mp4"})
  manifest = videos / "manifest.jsonl"
  manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return dict(root=root, bad=bad, garbage=garbage, manifest=str(manifest), tool=_tool())


def test_scores_jsonl_summary_and_resume(work):
  out = str(work["root"] / "work" / "scores.jsonl")
  s = work["tool"].run(_config(), work["manifest"], out, critic_path=work["bad"], progress=False)
  counts = (s["videos_in_manifest"], s["scored"], s["unreadable"], s["unparseable_videos"])
  assert counts == (4, 3, 1, 0)
  assert s["unreadable_videos"][0].startswith(os.path.join(os.path.dirname(work["manifest"]),
                                                           "corrupt.mp4"))
  assert s["mean_reward"] == pytest.approx(0.05) and s["critic"]["template"] == "vicuna_v1"
  assert s["label_counts"] == {d: {"Good": 0, "Normal": 0, "Bad": 3} for d in s["label_counts"]}
  rows = [json.loads(x) for x in open(out)]
  assert [r["path"] for r in rows] == [f"videos/{k:03d}.mp4" for k in range(3)]
  r = rows[0]
  assert (r["prompt"], r["seed"], r["mode"]) == ("A panda eats bamboo, take 0.", 0, "generate")
  assert r["labels"] == {d: "Bad" for d in r["labels"]} and len(r["labels"]) == 3
  assert set(r["reasons"].values()) == {"blurry"} and r["reward"] == pytest.approx(0.05)
  assert r["scores"] == {d: 0.05 for d in r["labels"]}
  summary = json.load(open(work["root"] / "work" / "scores.summary.json"))
  assert summary["scored"] == 3 and summary["unreadable"] == 1
  joined = records.join_records(work["manifest"], out)
  assert [rec.reward for rec in joined.records] == pytest.approx([0.05] * 3)
  assert joined.unscored == [os.path.join(os.path.dirname(work["manifest"]), "corrupt.mp4")]

  # Run again: nothing left but the corrupt file, which is tried (and skipped) again.
  s = work["tool"].run(_config(), work["manifest"], out, critic_path=work["bad"], progress=False)
  assert s["this_run"]["resumed"] == 3 and s["this_run"]["scored"] == 0 and s["scored"] == 3
  assert len(open(out).readlines()) == 3


def _strict():
  cfg = _config()
  cfg.reward.parse_rule = "start"  # the strict reading (the paper configs default to LiFT's)
  return cfg


def test_unparseable_answers_are_counted(work):
  out = str(work["root"] / "work" / "garbage.jsonl")
  for mode in ("generate", "logits"):
    s = work["tool"].run(_strict(), work["manifest"], out, critic_path=work["garbage"], mode=mode,
                         overwrite=True, progress=False)
    assert (s["scored"], s["unparseable_videos"], s["unparseable_answers"], s["unreadable"]) == (
        0, 3, 9, 1), mode
    assert s["mean_reward"] is None and s["this_run"]["unparseable_answers"] == 9
    assert os.path.getsize(out) == 0
    bad = [json.loads(x) for x in open(work["root"] / "work" / "garbage.unparsed.jsonl")]
    assert len(bad) == 3 and all(len(b["unparsed"]) == 3 and b["reward"] is None for b in bad)
    if mode == "generate":
      assert set(bad[0]["answers"].values()) == {"Hmm"}
    else:
      assert max(bad[0]["label_mass"].values()) < 1e-3
  # Policy "bad": they are scored (as Bad) and still counted.
  cfg = _strict()
  cfg.reward.unparseable = "bad"
  s = work["tool"].run(cfg, work["manifest"], out, critic_path=work["garbage"], mode="logits",
                       overwrite=True, progress=False)
  assert (s["scored"], s["unparseable_videos"], s["unparseable_answers"]) == (3, 0, 9)
  assert s["mean_reward"] == pytest.approx(0.05)
  # The paper config's default, LiFT's get_score: "Hmm" reads as Good (0.9, rounded), and the 9
  # answers the strict reading rejects are still counted.
  s = work["tool"].run(_config(), work["manifest"], out, critic_path=work["garbage"],
                       mode="generate", overwrite=True, progress=False)
  assert (s["scored"], s["unparseable_videos"], s["strict_rejects"]) == (3, 0, 9)
  assert s["this_run"]["unparseable_answers"] == 9 and s["mean_reward"] == 0.9
  lift_out = json.load(open(work["root"] / "work" / "critic_output_13b.json"))
  assert [x["video"] for x in lift_out] == [f"{k:03d}.mp4" for k in range(3)]
  assert all(x[d] == "Hmm" for x in lift_out for d in s["label_counts"])


def test_command_line(work, tmp_path):
  out = tmp_path / "cli" / "scores.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", LIFT_JAX_COMPILATION_CACHE="")
  cmd = [sys.executable, os.path.join(ROOT, "tools", "score.py"),
         f"--config={os.path.join(ROOT, 'configs', 'critic_13b.py')}",
         "--manifest", work["manifest"], "--out", str(out), "--mode", "logits", "--noprogress",
         "--config.critic.dtype=float32", "--config.batch_videos=3"]
  p = subprocess.run(cmd + ["--critic", work["bad"]], capture_output=True, text=True, cwd=ROOT,
                     env=env, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.loads(p.stdout)
  assert (summary["scored"], summary["unreadable"], summary["mode"]) == (3, 1, "logits")
  assert "1 unreadable video(s)" in p.stderr
  rows = [json.loads(x) for x in open(out)]
  assert all(r["labels"] == {d: "Bad" for d in r["labels"]} and r["probs"] for r in rows)
  assert np.isclose(rows[0]["probs"]["fidelity issues"]["Bad"], 1.0, atol=1e-3)
  p = subprocess.run(cmd + ["--critic", str(tmp_path / "nowhere")], capture_output=True,
                     text=True, cwd=ROOT, env=env, timeout=120)
  assert p.returncode == 2 and "nowhere" in p.stderr


def test_score_reads_and_writes_gs_paths(work, gcs):  # noqa: F811
  """The critic, the manifest, its videos and the scores on `gs://` (mapped onto a temp folder,
  tests/stages/gcs.py): the critic is read (through a local copy), the scores land beside the
  videos, with paths relative to them."""
  shutil.copytree(os.path.dirname(work["manifest"]), gcs / "bucket" / "work" / "videos")
  shutil.copytree(work["bad"], gcs / "bucket" / "critic")
  out = "gs://bucket/work/scores.jsonl"
  s = work["tool"].run(_config(), "gs://bucket/work/videos/manifest.jsonl", out,
                       critic_path="gs://bucket/critic", progress=False)
  assert (s["out"], s["scored"], s["unreadable"]) == (out, 3, 1)
  assert s["critic"]["path"] == "gs://bucket/critic"
  assert s["unreadable_videos"][0].startswith("gs://bucket/work/videos/corrupt.mp4")
  local = gcs / "bucket" / "work"
  assert sorted(os.listdir(local)) == ["critic_output_13b.json", "scores.jsonl",
                                       "scores.summary.json", "scores.unparsed.jsonl", "videos"]
  rows = [json.loads(x) for x in open(local / "scores.jsonl")]
  assert [r["path"] for r in rows] == [f"videos/{k:03d}.mp4" for k in range(3)]
  assert all(r["reward"] == pytest.approx(0.05) for r in rows)
  joined = records.join_records("gs://bucket/work/videos/manifest.jsonl", out)
  assert [rec.path for rec in joined.records] == [f"gs://bucket/work/videos/{k:03d}.mp4"
                                                  for k in range(3)]
  again = work["tool"].run(_config(), "gs://bucket/work/videos/manifest.jsonl", out,
                           critic_path=work["bad"], progress=False)
  assert again["this_run"]["resumed"] == 3 and again["this_run"]["scored"] == 0

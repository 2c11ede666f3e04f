"""LiFT's own files in and out: its critic input list, its critic output, its fine-tuning list, and
the real VIDGEN ratings (the real files come through LIFT_JAX_REAL_ASSETS)."""

import collections
import json
import os

import pytest

from lift_jax.data import hra, lift_files
from lift_jax.data.records import RewardRecord
from lift_jax.lift import reward


def real_lift(name: str) -> str:
  root = os.environ.get("LIFT_JAX_REAL_ASSETS")
  if not root:
    pytest.skip("LIFT_JAX_REAL_ASSETS is unset: LiFT's real files are not available")
  path = os.path.join(root, "lift", name)
  assert os.path.isfile(path), f"{path}: missing from LIFT_JAX_REAL_ASSETS"
  return path


def test_rewards_from_real_critic_outputs_by_lifts_rule():
  # By hand, Good 0.9 / Normal 0.2 / Bad 0.05, mean of three rounded to 2 digits (get_score):
  #   13B demo_0: Good, Bad, Good      -> (0.9 + 0.05 + 0.9) / 3 = 0.6166.. -> 0.62
  #   13B demo_1: Bad, Bad, Normal     -> (0.05 + 0.05 + 0.2) / 3 = 0.1     -> 0.1
  #   40B demo_0: Good, Good, Good     -> 0.9
  #   40B demo_1: Bad, Bad, Normal     -> 0.1
  for name, want in (("critic_output_13b.json", [0.62, 0.1]),
                     ("critic_output_40b.json", [0.9, 0.1])):
    items = lift_files.read_critic_output(real_lift(name))
    stats = reward.LabelStats()
    assert reward.critic_output_rewards(items, stats=stats) == want, name
    assert stats.num_unparseable == 0  # every real answer opens with its label
    assert [x["video"] for x in items] == ["0.mp4", "1.mp4"]


def test_real_test_json_is_a_score_input(tmp_path):
  path = real_lift("test.json")
  rows = lift_files.read_critic_inputs(path, video_root=str(tmp_path))
  assert [r["resolved"] for r in rows] == [str(tmp_path / "0.mp4"), str(tmp_path / "1.mp4")]
  assert rows[0]["row"]["video_id"] == "demo_0.mp4"
  assert rows[1]["caption"].startswith("A fluffy panda wears a futuristic spacesuit")
  default = lift_files.read_critic_inputs(path)  # videos beside the list, as LiFT's demo/
  assert default[0]["resolved"] == os.path.join(os.path.dirname(path), "0.mp4")


def test_published_data_json_template_is_named_with_a_clear_error():
  path = real_lift("data.json")
  with pytest.raises(ValueError, match="published template") as info:
    lift_files.read_data_json(path)
  assert path in str(info.value)


def test_data_json_round_trip(tmp_path):
  recs = [RewardRecord(str(tmp_path / "v0.mp4"), "a cat", 0.62),
          RewardRecord(str(tmp_path / "v1.mp4"), "a dog", 0.9)]
  path = str(tmp_path / "data.json")
  lift_files.write_data_json(path, recs)
  rows = json.load(open(path))
  assert rows[0] == {"video": str(tmp_path / "v0.mp4"), "caption": "a cat", "score": 0.62}
  back = lift_files.read_data_json(path)
  assert [(r.path, r.caption, r.reward, r.all_good) for r in back] == [
      (str(tmp_path / "v0.mp4"), "a cat", 0.62, False), (str(tmp_path / "v1.mp4"), "a dog", 0.9,
                                                         True)]
  (tmp_path / "rel.json").write_text(json.dumps([{"video": "clips/x.mp4", "caption": "c",
                                                  "score": "0.2"}]))
  rel = lift_files.read_data_json(str(tmp_path / "rel.json"), video_root=str(tmp_path / "root"))
  assert rel[0].path == str(tmp_path / "root" / "clips" / "x.mp4") and rel[0].reward == 0.2
  (tmp_path / "bad.json").write_text(json.dumps([{"video": "x.mp4", "caption": "c",
                                                  "score": "reward_score"}]))
  with pytest.raises(ValueError, match=r"bad.json\[0\]: field 'score' must be a number"):
    lift_files.read_data_json(str(tmp_path / "bad.json"))


def test_real_vidgen_parses_with_no_malformed_entry_and_names_each_absent_video(tmp_path):
  src = hra.Source("vidgen", real_lift("vidgen-data.json"), str(tmp_path), split="train")
  skipped = []
  entries = hra.read_source(src, skipped)
  assert skipped == [] and len(entries) == 1000
  assert len({e.video for e in entries}) == 711
  assert collections.Counter(e.dimension for e in entries) == {
      "semantic consistency": 352, "motion issues": 333, "fidelity issues": 315}
  assert {(e.label, e.reason) for e in entries} == {("Good", "There are no obvious problems.")}
  assert all(e.caption and not e.user_text.startswith("<video>") for e in entries)
  # The videos are not shipped: every entry is skipped, naming its video, and nothing is written.
  report = hra.HraReport()
  examples = list(hra._examples(entries, {"vidgen": str(tmp_path)}, num_frames=8, height=4,
                                width=4, resample=3, workers=2, report=report, split="train"))
  assert examples == [] and len(report.skipped) == 1000
  assert {s["video"] for s in report.skipped} == {e.video for e in entries}
  assert all(s["reason"] == "unreadable video: no such file" for s in report.skipped)
  with pytest.raises(ValueError, match="no usable entry among 1000 parsed"):
    hra.build_hra(str(tmp_path / "out"), sources=[src], progress=False)

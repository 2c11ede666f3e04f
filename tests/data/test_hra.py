"""LiFT-HRA as TFDS: a tiny release in the published layout (HRA + VIDGEN JSON, mp4s, a corrupt and
a missing video, malformed entries) -> ArrayRecord splits with the right fields and frames."""

import json
import os

import numpy as np
import pytest

from lift_jax.data import hra, video
from lift_jax.models.critic.prompts import QUESTIONS

DIMS = list(QUESTIONS)
CAPTIONS = ["A panda eats bamboo in the snow.", "Two horses run across a wet beach at dusk.",
            "A waiter in a black suit nods politely.", "A red car drives through a tunnel.",
            "An eagle lands on a rock by the sea.", "A chef stirs a pot of soup."]
LABEL_OF = ["Good", "Normal", "Bad"]
SHORT = 5  # frames of video hra_5: fewer than the critic's 8


def video_frames(i: int, n: int = 10, h: int = 24, w: int = 32) -> np.ndarray:
  """Distinct, mostly flat colours per video (so H.264 keeps them), with a moving bar."""
  rng = np.random.default_rng(i)
  base = rng.integers(30, 226, 3)
  frames = np.broadcast_to(base, (n, h, w, 3)).astype(np.uint8).copy()
  for t in range(n):
    frames[t, :, (3 * t) % w:(3 * t) % w + 4] = 255 - base
  return frames


def entry(video_path: str, caption: str, dim: str, answer: str) -> dict:
  return {"video": video_path, "conversations": [
      {"from": "human", "value": f"<video>\n {caption}{QUESTIONS[dim]}"},
      {"from": "gpt", "value": answer}]}


def label_for(i: int, d: int) -> str:
  """A rule the critic can learn from the frames and the question: (video + dimension) mod 3."""
  return LABEL_OF[(i + d) % 3]


def make_release(root, n_videos: int = 6, *, broken: bool = True, vidgen: int = 2) -> dict:
  """Writes `root/LiFT-HRA/{LiFT-HRA-data.json, videos/}` and `root/VIDGEN/...` like the release.

  Every good video has all three dimensions; video 5 has only 5 frames (shown as 5, as VILA);
  `broken` adds malformed entries, a corrupt and a missing video. Returns what was written (for
  hand counts).
  """
  hra_dir, vid_dir = root / "LiFT-HRA", root / "VIDGEN"
  entries, expected = [], []
  for i in range(n_videos):
    rel = f"videos/hra_{i}.mp4"
    video.write_video(str(hra_dir / rel), video_frames(i, n=SHORT if i == 5 else 10))
    for d, dim in enumerate(DIMS):
      label = label_for(i, d)
      answer = f"{label}. Reason {i}-{d}: the {dim} looks {label.lower()}."
      entries.append(entry(rel, CAPTIONS[i % len(CAPTIONS)], dim, answer))
      expected.append(dict(video=rel, caption=CAPTIONS[i % len(CAPTIONS)], dimension=dim,
                           label=label, source="hra"))
  malformed = 0
  if broken:
    (hra_dir / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    entries.append(entry("videos/corrupt.mp4", "A corrupt one.", DIMS[0], "Good. Fine."))
    entries.append(entry("videos/missing.mp4", "A missing one.", DIMS[1], "Bad. Gone."))
    bad = [
        {"conversations": []},                                                  # no video
        entry("videos/hra_0.mp4", "No label here.", DIMS[2], "It is fine."),     # no label
        {"video": "videos/hra_1.mp4", "conversations": [                        # unknown question
            {"from": "human", "value": "<video>\n A cat. Is it nice?"},
            {"from": "gpt", "value": "Good. Yes."}]},
        {"video": "videos/hra_1.mp4", "conversations": [                        # turns swapped
            {"from": "gpt", "value": "Good."}, {"from": "human", "value": "x"}]},
        "not an object",
    ]
    entries += bad
    malformed = len(bad)
  os.makedirs(hra_dir, exist_ok=True)
  (hra_dir / "LiFT-HRA-data.json").write_text(json.dumps(entries, indent=1))
  vid_entries = []
  for j in range(vidgen):
    rel = f"videos/real_{j}.mp4"
    video.write_video(str(vid_dir / rel), video_frames(100 + j, n=12))
    vid_entries.append(entry(rel, f"The video features scene {j}.", DIMS[j % 3],
                             "Good. There are no obvious problems."))
    expected.append(dict(video=rel, caption=f"The video features scene {j}.", dimension=DIMS[j % 3],
                         label="Good", source="vidgen"))
  if vidgen:
    (vid_dir / "vidgen-data.json").write_text(json.dumps(vid_entries))
  return dict(expected=expected, malformed=malformed, unreadable=2 if broken else 0,
              n_videos=n_videos)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("release")
  info = make_release(root)
  calls = []
  real_load = hra.load_frames

  def counting_load(path, **kw):
    calls.append(path)
    return real_load(path, **kw)

  hra.load_frames, saved = counting_load, hra.load_frames
  try:
    report = hra.build_hra(str(root / "hra_ds"), manual_dir=str(root), test_size=6, seed=0,
                           image_size=28, progress=False)
  finally:
    hra.load_frames = saved
  return dict(root=root, info=info, report=report, calls=calls,
              ds=hra.open_hra(str(root / "hra_ds")))


def test_parse_entry_recognises_dimension_caption_label_reason():
  e = hra.parse_entry(entry("videos/a.mp4", "A panda eats bamboo.", "fidelity issues",
                            "Bad. The panda's paw has six fingers.  "), source="hra", index=7)
  assert (e.dimension, e.caption, e.label, e.reason) == (
      "fidelity issues", "A panda eats bamboo.", "Bad", "The panda's paw has six fingers.")
  # VILA's training text: <video>\n removed, the leading space kept, right-stripped.
  assert e.user_text == " A panda eats bamboo." + QUESTIONS["fidelity issues"]
  assert e.answer == "Bad. The panda's paw has six fingers." and e.key == "hra-00000007"
  # A reworded question still names its dimension.
  loose = {"video": "v.mp4", "conversations": [
      {"from": "human",
       "value": "<video>\nA dog. Please identify the motion issues in this video."},
      {"from": "gpt", "value": "normal: slight jitter"}]}
  e = hra.parse_entry(loose)
  assert (e.dimension, e.caption, e.label, e.reason) == ("motion issues", "A dog.", "Normal",
                                                         "slight jitter")
  for bad, why in (({"video": "v.mp4"}, "conversations"),
                   (entry("v.mp4", "A.", "motion issues", "Goodness. no"), "Good/Normal/Bad"),
                   (entry("v.mp4", "", "motion issues", "Good."), "empty caption")):
    with pytest.raises(hra.EntryError, match=why):
      hra.parse_entry(bad)


def test_split_sizes_sources_and_report(built):
  info, report, ds = built["info"], built["report"], built["ds"]
  n_hra = 3 * info["n_videos"]
  assert report.written == {"train": n_hra - 6 + 2, "test": 6}
  assert dict(report.by_source) == {"hra": n_hra, "vidgen": 2}
  assert {s: len(v) for s, v in ds.items()} == report.written
  reasons = [s["reason"] for s in report.skipped]
  assert sum(r.startswith("malformed") for r in reasons) == info["malformed"]
  assert sum(r.startswith("unreadable") for r in reasons) == info["unreadable"]
  assert {s["video"] for s in report.skipped if s["reason"].startswith("unreadable")} == {
      "videos/corrupt.mp4", "videos/missing.mp4"}
  with open(built["root"] / "hra_ds" / hra.REPORT_FILE) as f:
    assert json.load(f)["num_skipped"] == len(report.skipped)
  texts = hra.hra_texts(str(built["root"] / "hra_ds"))
  assert {s: len(t) for s, t in texts.items()} == report.written
  assert sorted(map(tuple, texts["test"])) == sorted(
      (hra.text(ex["video_id"]), hra.text(ex["dimension"]), hra.text(ex["user_text"]),
       hra.text(ex["answer"])) for ex in (ds["test"][i] for i in range(len(ds["test"]))))
  # Split by video: a test video has all its three ratings in test, none in train.
  test_videos = {hra.text(ds["test"][i]["video_id"]) for i in range(len(ds["test"]))}
  train_videos = {hra.text(ds["train"][i]["video_id"]) for i in range(len(ds["train"]))}
  assert len(test_videos) == 2 and not test_videos & train_videos
  vidgen = [hra.text(ds["train"][i]["source"]) for i in range(len(ds["train"]))].count("vidgen")
  assert vidgen == 2  # the real-video add-on is training data


def test_fields_and_frames_match_the_critics_sampling(built):
  ds, info = built["ds"], built["info"]
  want = {(e["source"], e["video"], e["dimension"]): e for e in info["expected"]}
  seen = set()
  for split in hra.SPLITS:
    for i in range(len(ds[split])):
      ex = ds[split][i]
      key = (hra.text(ex["source"]), hra.text(ex["video_id"]), hra.text(ex["dimension"]))
      e = want[key]
      seen.add(key)
      assert hra.text(ex["caption"]) == e["caption"] and hra.text(ex["label"]) == e["label"]
      assert int(ex["label_id"]) == hra.LABELS.index(e["label"])
      assert int(ex["dimension_id"]) == DIMS.index(e["dimension"])
      assert hra.text(ex["answer"]).startswith(e["label"] + ". ")
      n = SHORT if hra.text(ex["video_id"]) == "videos/hra_5.mp4" else 8
      assert ex["frames"].shape == (n, 28, 28, 3) and ex["frames"].dtype == np.uint8
      assert int(ex["num_frames"]) == n and ex["frame_indices"].shape == (n,)
  assert seen == set(want)
  # Frames: linspace over the decoded count, PIL-squashed to the processor size.
  ex = next(ds["train"][i] for i in range(len(ds["train"]))
            if hra.text(ds["train"][i]["video_id"]) == "videos/real_0.mp4")
  path = str(built["root"] / "VIDGEN" / "videos" / "real_0.mp4")
  full = video.read_video(path)
  idx = np.linspace(0, len(full) - 1, 8, dtype=int)
  np.testing.assert_array_equal(ex["frame_indices"], idx)
  assert int(ex["num_video_frames"]) == 12
  np.testing.assert_array_equal(ex["frames"], hra.resize_frames_pil(full[idx], 28, 28))
  # A video shorter than 8 frames keeps all its frames, none repeated (VILA's frames_loaded).
  short = [ds[s][i] for s in hra.SPLITS for i in range(len(ds[s]))
           if hra.text(ds[s][i]["video_id"]) == "videos/hra_5.mp4"]
  assert len(short) == 3
  full = video.read_video(str(built["root"] / "LiFT-HRA" / "videos" / "hra_5.mp4"))
  assert len(full) == SHORT
  for ex in short:
    np.testing.assert_array_equal(ex["frame_indices"], np.arange(SHORT))
    assert int(ex["num_video_frames"]) == SHORT
    np.testing.assert_array_equal(ex["frames"], hra.resize_frames_pil(full, 28, 28))
  # Decoded once per video (2 unreadable ones tried once too), not once per entry.
  assert len(built["calls"]) == info["n_videos"] + 2 + 2
  assert len(set(built["calls"])) == len(built["calls"])


def test_fraction_split_is_seeded_and_existing_output_is_refused(tmp_path):
  info = make_release(tmp_path, n_videos=4, broken=False, vidgen=0)
  sources = hra.find_sources(str(tmp_path))
  entries = hra.read_source(sources[0])
  a = hra.split_entries(entries, sources, test_size=0.25, seed=3)
  b = hra.split_entries(entries, sources, test_size=0.25, seed=3)
  assert [e.key for e in a["test"]] == [e.key for e in b["test"]] and len(a["test"]) == 3
  assert len(a["train"]) + len(a["test"]) == 3 * info["n_videos"]
  out = tmp_path / "ds"
  hra.build_hra(str(out), manual_dir=str(tmp_path), test_size=0, image_size=28, progress=False)
  assert sorted(hra.open_hra(str(out))) == ["train"]  # TFDS has no empty splits
  with pytest.raises(FileExistsError, match="overwrite"):
    hra.build_hra(str(out), manual_dir=str(tmp_path), image_size=28, progress=False)
  with pytest.raises(FileNotFoundError, match="LiFT-HRA JSON"):
    hra.find_sources(str(tmp_path / "nowhere"))

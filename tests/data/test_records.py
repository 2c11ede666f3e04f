"""Joining manifest + scores (+ real videos) into records, and the TFDS/ArrayRecord dataset."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from lift_jax.data import generated, records


def write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


@pytest.fixture
def work(tmp_path):
  """A work dir as the generate/score stages leave it: relative paths, one unscored video."""
  (tmp_path / "videos").mkdir()
  manifest = write_jsonl(tmp_path / "videos" / "manifest.jsonl", [
      {"prompt": "a cat", "seed": 0, "path": "v0.mp4"},
      {"prompt": "a cat", "seed": 1, "path": "v1.mp4"},
      {"prompt": "a dog", "seed": 2, "path": str(tmp_path / "videos" / "v2.mp4")},
      {"prompt": "a fox", "seed": 3, "path": "v3.mp4"},  # the score stage skipped this one
  ])
  good = {"semantic consistency": "Good", "fidelity issues": "Good", "motion issues": "Good"}
  scores = write_jsonl(tmp_path / "scores.jsonl", [
      {"path": "videos/v0.mp4", "labels": good, "reward": 0.9},
      {"path": str(tmp_path / "videos" / "v1.mp4"),
       "labels": {**good, "motion issues": "Bad"}, "reward": 0.62},
      {"path": "videos/./v2.mp4", "labels": {**good, "fidelity issues": "Normal. blurry"}},
      "",
      {"path": "videos/v9.mp4", "reward": 0.1},  # no such video in the manifest
  ])
  real = write_jsonl(tmp_path / "real.jsonl", [{"path": "/data/openvid/r0.mp4", "caption": "real"}])
  return tmp_path, manifest, scores, real


def test_join(work):
  root, manifest, scores, real = work
  out = records.join_records(manifest, scores, real, real_weight=0.5)
  v = lambda i: str(root / "videos" / f"v{i}.mp4")
  assert [r.path for r in out.records] == [v(0), v(1), v(2), "/data/openvid/r0.mp4"]
  r0, r1, r2, rr = out.records
  assert (r0.caption, r0.reward, r0.all_good, r0.is_real) == ("a cat", 0.9, True, False)
  assert (r1.reward, r1.all_good) == (0.62, False)
  assert r2.reward == pytest.approx((0.9 + 0.9 + 0.2) / 3) and not r2.all_good  # from labels
  assert (rr.caption, rr.reward, rr.is_real, rr.all_good) == ("real", 0.5, True, True)
  assert out.unscored == [v(3)] and out.unknown == [v(9)]
  assert (out.num_synthetic, out.num_real) == (3, 1)


def test_records_file_round_trip(work, tmp_path):
  _, manifest, scores, real = work
  recs = records.join_records(manifest, scores, real).records
  path = records.write_records(str(tmp_path / "rewards.jsonl"), recs)
  assert records.read_records(path) == recs


def test_join_errors_name_file_and_line(work):
  root, manifest, scores, _ = work
  bad = write_jsonl(root / "bad.jsonl", [{"path": "x.mp4", "reward": 0.2}, "{not json"])
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    records.join_records(manifest, bad)
  dup = write_jsonl(root / "dup.jsonl", [{"path": "videos/v0.mp4", "reward": 0.2}] * 2)
  with pytest.raises(ValueError, match=r"dup.jsonl:2: .*scored twice"):
    records.join_records(manifest, dup)
  nofield = write_jsonl(root / "nof.jsonl", [{"prompt": "x"}])
  with pytest.raises(ValueError, match=r"nof.jsonl:1: missing field 'path'"):
    records.join_records(nofield, scores)
  badlabel = write_jsonl(root / "bl.jsonl", [{"path": "videos/v0.mp4", "labels": {"a": "Great"}}])
  with pytest.raises(ValueError, match=r"bl.jsonl:1: label 'Great'"):
    records.join_records(manifest, badlabel)
  badreward = write_jsonl(root / "br.jsonl", [{"path": "videos/v0.mp4", "reward": "high"}])
  with pytest.raises(ValueError, match=r"br.jsonl:1: field 'reward' must be"):
    records.join_records(manifest, badreward)


def test_reward_from_labels_matches_paper_table():
  g, n, b = "Good", "Normal", "Bad"
  for labels, want in [((g, g, g), 0.90), ((g, g, n), 0.67), ((g, n, b), 0.38), ((b, b, b), 0.05)]:
    got = records.reward_from_labels(dict(zip("abc", labels)))
    assert round(got, 2) == want


def example(i, latent_dtype=np.float32, embed_dtype=ml_dtypes.bfloat16, real=False):
  rng = np.random.default_rng(i)
  return {"latent_mean": rng.normal(size=(4, 2, 3, 5)).astype(latent_dtype),
          "latent_logvar": rng.normal(size=(4, 2, 3, 5)).astype(latent_dtype),
          "text_embeds": rng.normal(size=(7, 6)).astype(embed_dtype),
          "reward": np.float32(0.1 * i), "is_real": real, "all_good": i % 2 == 0,
          "caption": f"caption {i} ✓", "path": f"/videos/{i}.mp4"}


@pytest.mark.parametrize("latent_dtype,embed_dtype", [("float32", "bfloat16"),
                                                      ("float16", "float16")])
def test_builder_writes_and_reads_back(tmp_path, latent_dtype, embed_dtype):
  ld, ed = generated._np_dtype(latent_dtype), generated._np_dtype(embed_dtype)
  syn = [example(i, ld, ed) for i in range(5)]
  real = [example(10 + i, ld, ed, real=True) for i in range(2)]
  out = str(tmp_path / "prepared")
  generated.write_dataset(out, {"synthetic": iter(syn), "real": iter(real)},
                          latent_shape=(4, 2, 3, 5), text_shape=(7, 6), latent_dtype=latent_dtype,
                          embed_dtype=embed_dtype, metadata={"scaling_factor": 0.7},
                          extra_files={"note.txt": lambda: "hello"})
  assert sorted(os.listdir(tmp_path)) == ["prepared"]  # temporary folders renamed or removed
  assert open(os.path.join(out, "note.txt")).read() == "hello"
  assert generated.dataset_metadata(out)["scaling_factor"] == 0.7
  src = generated.open_dataset(out)
  assert {k: len(v) for k, v in src.items()} == {"synthetic": 5, "real": 2}
  for want, got in [(syn[3], src["synthetic"][3]), (real[1], src["real"][1])]:
    for k in ("latent_mean", "latent_logvar", "text_embeds"):
      assert got[k].dtype == want[k].dtype
      np.testing.assert_array_equal(got[k], want[k])
    assert got["reward"] == want["reward"] and got["is_real"] == want["is_real"]
    assert got["all_good"] == want["all_good"]
    assert got["caption"].decode() == want["caption"] and got["path"].decode() == want["path"]
  # The folder can be moved: the data source resolves its shards relative to it.
  os.rename(out, str(tmp_path / "moved"))
  assert len(generated.open_dataset(str(tmp_path / "moved"))["synthetic"]) == 5


def test_builder_overwrite_and_empty_split(tmp_path):
  out = str(tmp_path / "prepared")
  kw = dict(latent_shape=(4, 2, 3, 5), text_shape=(7, 6))
  generated.write_dataset(out, {"synthetic": [example(0)]}, **kw)
  with pytest.raises(FileExistsError, match="overwrite"):
    generated.write_dataset(out, {"synthetic": [example(1)]}, **kw)
  generated.write_dataset(out, {"synthetic": [example(1), example(2)]}, overwrite=True, **kw)
  src = generated.open_dataset(out)
  assert len(src["synthetic"]) == 2 and "real" not in src  # TFDS has no empty splits
  assert sorted(os.listdir(tmp_path)) == ["prepared"]


def test_failed_write_leaves_nothing(tmp_path):
  def broken():
    yield example(0)
    raise RuntimeError("encoder died")
  out = str(tmp_path / "prepared")
  with pytest.raises(RuntimeError, match="encoder died"):
    generated.write_dataset(out, {"synthetic": broken()}, latent_shape=(4, 2, 3, 5),
                            text_shape=(7, 6))
  assert os.listdir(tmp_path) == []


def test_open_dataset_names_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    generated.open_dataset(str(tmp_path))

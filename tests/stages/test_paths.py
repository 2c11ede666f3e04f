"""Stages against a non-local path scheme: `gs://` mapped onto a temporary folder for the test.

The mapping is an fsspec filesystem registered for the `gs`/`gcs` protocols, which is what
etils.epath asks for a `gs://` path when TensorFlow is absent (with gcsfs installed, the real
GCS). So the stages' own code takes exactly the path it takes on a pod; only the bytes land in a
local folder. The working directory is another folder, so a path that slipped past epath (an
`open("gs://...")` or `os.makedirs`) would show up there as a `gs:` folder.
"""

import json
import os
import sys

import fsspec.registry  # noqa: F401  (its module holds the registry)
import numpy as np
import pytest
from etils.epath import backend, gpath
from fsspec.implementations.local import LocalFileSystem

from lift_jax import files
from lift_jax.data import generated, records, video
from lift_jax.lift import report
from tests.data.test_prepare_data import stand_in_encoders
from lift_jax.stages import prepare


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """`gs://B/x` -> tmp_path/"gcs"/B/x for the test; yields that root (cwd is tmp_path/"cwd")."""
  root = tmp_path / "gcs"
  root.mkdir()

  class Mapped(LocalFileSystem):
    """A local folder standing in for a bucket store: no folders needed before a write."""
    protocol = ("gs", "gcs")
    root_dir = str(root)

    def __init__(self, *args, **kwargs):
      kwargs.pop("finalize_on_close", None)
      super().__init__(*args, auto_mkdir=True, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      if path.startswith(("gs://", "gcs://")):
        return os.path.join(cls.root_dir, path.split("://", 1)[1])
      return super()._strip_protocol(path)

    def glob(self, path, **kwargs):  # back to bucket paths (epath puts gs:// before them)
      return [p[len(self.root_dir) + 1:] if p.startswith(self.root_dir + "/") else p
              for p in super().glob(path, **kwargs)]

  for protocol in ("gs", "gcs"):  # what fsspec.register_implementation does, undone after
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, protocol, Mapped)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  backend.fsspec_backend._get_filesystem.cache_clear()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()
  assert not os.listdir(cwd), f"a path went around epath: {os.listdir(cwd)} in the cwd"


def test_files_on_the_mapped_store(gcs):
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


def test_prepare_stage_reads_and_writes_gs_paths(gcs, capsys):
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


def test_report_reads_and_writes_gs_paths(gcs):
  _write_inputs("gs://bucket/work")
  out = report.write_report("gs://bucket/work/report.html", config={"x": 1},
                            manifest_before="gs://bucket/work/manifest.jsonl",
                            scores_before="gs://bucket/work/scores.jsonl", scores_after=None)
  assert out == "gs://bucket/work/report.html"
  page = (gcs / "bucket" / "work" / "report.html").read_text()
  assert page.startswith("<!doctype html>") and "Config" in page

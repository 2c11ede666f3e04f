"""The generate stage (lift_jax.stages.generate, tools/generate.py) end to end on a tiny random CogVideoX (5B layout: RoPE, no SNR shift) whose
transformer, VAE and T5 were converted with tools/convert_checkpoint.py's code path: mp4 files
that read back, the manifest, resuming, and the errors for bad prompts files and checkpoints."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lift_jax import files
from lift_jax.models import convert
from lift_jax.checkpoint.safetensors import CheckpointError
from lift_jax.data import records
from lift_jax.stages import generate as generate_stage
from lift_jax.data.video import read_video
from tests.diffusion.test_pipeline import FRAMES, HEIGHT, WIDTH, build_tiny_pipeline
from tests.stages.gcs import gcs  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS_TXT = """# LiFT prompts
a panda playing guitar in a bamboo forest

waves crashing on a rocky beach
   a cat sits on the mat
"""


def _tool():
  return generate_stage


def _config(models, **over):
  sys.path.insert(0, ROOT)
  from configs import cogvideox_5b
  cfg = cogvideox_5b.get_config()
  cfg.model.transformer = models["transformer"]
  cfg.model.vae = models["vae"]
  cfg.model.text_encoder = models["text_encoder"]
  cfg.model.tokenizer = models["tokenizer"]
  cfg.model.dtype = "float32"
  cfg.video.num_frames, cfg.video.height, cfg.video.width = FRAMES, HEIGHT, WIDTH
  cfg.sampling.num_steps = 2
  cfg.batch_size = 2
  cfg.vae.tiling = False
  cfg.mesh.data = 1  # one device: no mesh
  cfg.compilation_cache = ""
  for k, v in over.items():
    node = cfg
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    setattr(node, leaf, v)
  return cfg


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  """A diffusers pipeline root and converted transformer/VAE/T5 beside it (no scheduler config:
  the 5B preset schedule is used)."""
  root = tmp_path_factory.mktemp("generate")
  upstream = str(root / "CogVideoX-tiny")
  build_tiny_pipeline(upstream, "5b")
  models = {"tokenizer": os.path.join(upstream, "tokenizer")}
  for name, kind in (("transformer", "cogvideox-transformer"), ("vae", "cogvideox-vae"),
                     ("text_encoder", "t5-encoder")):
    models[name] = str(root / "converted" / name)
    convert.convert(kind, os.path.join(upstream, name), models[name], progress=False)
  prompts = root / "prompts.txt"
  prompts.write_text(PROMPTS_TXT)
  return dict(root=root, upstream=upstream, models=models, prompts=str(prompts), tool=_tool())


def test_generate_manifest_and_resume(work):
  tool, out = work["tool"], str(work["root"] / "out")
  cfg = _config(work["models"])
  summary = tool.run(cfg, work["prompts"], out, num_videos_per_prompt=2, progress=False)
  assert (summary["prompts"], summary["videos"], summary["generated"]) == (3, 6, 6)
  rows = records.read_jsonl(os.path.join(out, "manifest.jsonl"))
  assert [r["path"] for r in rows] == [f"videos/{k:05d}.mp4" for k in range(6)]
  assert [r["seed"] for r in rows] == [42 + k for k in range(6)]
  assert [r["prompt"] for r in rows[::2]] == ["a panda playing guitar in a bamboo forest",
                                              "waves crashing on a rocky beach",
                                              "a cat sits on the mat"]
  first = rows[0]
  assert {k: first[k] for k in ("num_frames", "height", "width", "fps", "sampler", "num_steps",
                                "guidance_scale", "use_dynamic_cfg")} == dict(
      num_frames=FRAMES, height=HEIGHT, width=WIDTH, fps=8, sampler="dpm", num_steps=2,
      guidance_scale=6.0, use_dynamic_cfg=True)
  assert first["model"]["transformer"] == os.path.abspath(work["models"]["transformer"])
  assert first["model"]["scheduler"] is None
  frames = [read_video(os.path.join(out, r["path"])) for r in rows]
  assert all(f.shape == (FRAMES, HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for f in frames)
  assert frames[0].std() > 1 and not np.array_equal(frames[0], frames[1])  # seeds differ
  joined = records.join_records(os.path.join(out, "manifest.jsonl"),
                                _scores(out, rows))  # the next stage reads it
  assert len(joined.records) == 6

  # A lost video is made again, alone, with its seed: the same frames up to mp4 noise.
  lost = os.path.join(out, rows[3]["path"])
  before = read_video(lost).astype(np.float32)
  os.remove(lost)
  with open(os.path.join(out, "manifest.jsonl"), "a") as f:
    f.write('{"prompt": "cut by a kill')  # a run killed while appending
  again = tool.run(cfg, work["prompts"], out, num_videos_per_prompt=2, progress=False)
  assert (again["generated"], again["skipped_existing"]) == (1, 5)
  after = read_video(lost).astype(np.float32)
  assert np.abs(after - before).mean() < 2.0  # same seed, batch of 1 instead of 2
  rows2 = records.read_jsonl(os.path.join(out, "manifest.jsonl"))
  assert sorted(r["path"] for r in rows2) == [r["path"] for r in rows]
  # Nothing left: no model is even loaded.
  done = tool.run(cfg, work["prompts"], out, num_videos_per_prompt=2, progress=False)
  assert (done["generated"], done["skipped_existing"]) == (0, 6)
  # Other settings for the same paths are refused, naming the field.
  with pytest.raises(ValueError, match="num_steps=2, this run asks for 3"):
    tool.run(_config(work["models"], **{"sampling.num_steps": 3}), work["prompts"], out,
             num_videos_per_prompt=2, progress=False)


def _scores(out, rows):
  path = os.path.join(out, "scores.jsonl")
  records.write_jsonl(path, [{"path": r["path"], "reward": 0.5} for r in rows])
  return path


def test_prompts_and_checkpoint_errors(work, tmp_path):
  tool, models = work["tool"], work["models"]
  out = str(tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    tool.run(_config(models), str(tmp_path / "missing.txt"), out)
  empty = tmp_path / "empty.txt"
  empty.write_text("# nothing\n\n")
  with pytest.raises(ValueError, match="no prompts"):
    tool.run(_config(models), str(empty), out)
  with pytest.raises(CheckpointError, match="transformer checkpoint .*gone.*does not exist"):
    tool.run(_config(models, **{"model.transformer": str(tmp_path / "gone")}), work["prompts"],
             out)
  # A diffusers VAE folder with a truncated safetensors file.
  vae = tmp_path / "vae"
  shutil.copytree(os.path.join(work["upstream"], "vae"), vae)
  weights = vae / "diffusion_pytorch_model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-1000])
  with pytest.raises(CheckpointError, match=f"{weights}: truncated file"):
    tool.run(_config(models, **{"model.vae": str(vae)}), work["prompts"], out)
  assert not os.path.exists(out)  # nothing written before the checks


def test_command_line_names_the_missing_checkpoint(work, tmp_path):
  """The real command: exit status 2 and one clear line, before any model is loaded."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "LIFT_JAX_COMPILATION_CACHE": ""}
  cmd = [sys.executable, os.path.join(ROOT, "tools", "generate.py"),
         "--config=" + os.path.join(ROOT, "configs", "cogvideox_2b.py"),
         "--prompts", work["prompts"], "--out", str(tmp_path / "out"),
         "--model", str(tmp_path / "CogVideoX-2b")]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert f"error: pipeline root {tmp_path / 'CogVideoX-2b'}: does not exist" in proc.stderr


def test_generate_reads_and_writes_gs_paths(work, gcs):  # noqa: F811
  """The models, the prompts and the output folder on `gs://` (mapped onto a temp folder,
  tests/stages/gcs.py): the models are read (through a local copy), the videos and the manifest
  land there, read back through the same scheme, and a re-run resumes from them."""
  files.write_text("gs://bucket/prompts.txt", PROMPTS_TXT)
  models = {}
  for name, path in work["models"].items():
    shutil.copytree(path, gcs / "bucket" / "models" / name)
    models[name] = f"gs://bucket/models/{name}"
  cfg = _config(models)
  summary = generate_stage.run(cfg, "gs://bucket/prompts.txt", "gs://bucket/gen",
                               num_videos_per_prompt=1, progress=False)
  assert (summary["out"], summary["videos"], summary["generated"]) == ("gs://bucket/gen", 3, 3)
  local = gcs / "bucket" / "gen"
  assert sorted(os.listdir(local)) == ["manifest.jsonl", "videos"]
  assert sorted(os.listdir(local / "videos")) == [f"{k:05d}.mp4" for k in range(3)]
  rows = records.read_jsonl("gs://bucket/gen/manifest.jsonl")
  assert [(r["path"], r["seed"]) for r in rows] == [(f"videos/{k:05d}.mp4", 42 + k)
                                                    for k in range(3)]
  assert {k: rows[0]["model"][k] for k in models} == models  # the user's paths, not the copies
  frames = read_video("gs://bucket/gen/videos/00001.mp4")
  assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.std() > 1
  np.testing.assert_array_equal(frames, read_video(str(local / "videos" / "00001.mp4")))
  again = generate_stage.run(cfg, "gs://bucket/prompts.txt", "gs://bucket/gen",
                             num_videos_per_prompt=1, progress=False)
  assert (again["generated"], again["skipped_existing"]) == (0, 3)

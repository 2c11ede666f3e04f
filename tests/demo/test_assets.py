"""Demo assets: created without PyTorch, in layouts the upstream classes and our loaders both read,
idempotent, and each model runs one tiny forward pass after loading."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lift_jax.demo import assets as demo_assets
from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.models import cogvideox, critic, t5

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CREATE = """
import json, sys
from lift_jax.demo.assets import make_demo_assets
paths = make_demo_assets(sys.argv[1], seed=0, config=json.loads(sys.argv[2]))
assert "torch" not in sys.modules, "creating the demo assets imported torch"
print(json.dumps(paths))
"""


# Two steps of the world's pretraining: the wiring, not the result (that is the demo's slow test).
SETTINGS = {"world": {"steps": 2, "batch_size": 2}}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  """Built in a fresh interpreter, so an import of torch anywhere on the path is caught."""
  root = str(tmp_path_factory.mktemp("demo") / "assets")
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run([sys.executable, "-c", _CREATE, root, json.dumps(SETTINGS)],
                       capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_layout_and_idempotence(paths):
  for key, path in paths.items():
    assert os.path.exists(path), key
  pipe = paths["pipeline"]
  with open(os.path.join(pipe, "model_index.json")) as f:
    assert set(json.load(f)) >= {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"}
  assert sorted(os.listdir(paths["critic"])) == ["config.json", "llm", "mm_projector",
                                                 "vision_tower"]
  assert os.path.isfile(os.path.join(paths["critic"], "llm", "tokenizer.model"))
  assert os.path.isfile(os.path.join(paths["tokenizer"], "spiece.model"))
  manifest = os.path.join(paths["root"], demo_assets.MANIFEST)
  stamp = os.stat(manifest).st_mtime_ns
  assert demo_assets.make_demo_assets(paths["root"], seed=0, config=SETTINGS) == paths
  assert os.stat(manifest).st_mtime_ns == stamp
  assert not [f for f in os.listdir(os.path.dirname(paths["root"])) if ".tmp-" in f]
  schedule = NoiseSchedule.from_diffusers_config(
      json.load(open(os.path.join(paths["scheduler"], "scheduler_config.json"))))
  assert schedule == NoiseSchedule.cogvideox_5b()


def test_config_and_foreign_root(tmp_path):
  (tmp_path / "prompts.txt").write_text("# a comment\nA fox at dawn.\n\nA boat on a lake.\n")
  cfg = demo_assets.resolve_config({"prompts": [str(tmp_path / "prompts.txt"), "A third one."],
                                    "transformer": {"text_embed_dim": 32}, "seed": 3})
  assert cfg["prompts"] == ["A fox at dawn.", "A boat on a lake.", "A third one."]
  assert cfg["text_encoder"]["d_model"] == 32 and cfg["vae"]["sample_height"] == 16 * 8
  with pytest.raises(ValueError, match="text_embed_dim"):
    demo_assets.resolve_config({"text_encoder": {"d_model": 32}})
  with pytest.raises(ValueError, match="latent_channels"):
    demo_assets.resolve_config({"vae": {"latent_channels": 4}})
  (tmp_path / "mine.txt").write_text("user data")
  with pytest.raises(FileExistsError, match="does not hold demo assets"):
    demo_assets.make_demo_assets(str(tmp_path))
  assert (tmp_path / "mine.txt").exists()


def test_upstream_pipeline_reads_the_folder(paths):
  from diffusers import CogVideoXPipeline

  pipe = CogVideoXPipeline.from_pretrained(paths["pipeline"])
  assert type(pipe.scheduler).__name__ == "CogVideoXDDIMScheduler"
  assert pipe.vae.config.scaling_factor == 0.7 and len(pipe.vae.config.block_out_channels) == 4
  assert pipe.transformer.config.use_rotary_positional_embeddings
  ids = pipe.tokenizer(["A cat jumps onto a windowsill."], return_tensors="np").input_ids
  assert ids[0, -1] == 1 and ids.max() < pipe.text_encoder.config.vocab_size


def test_our_loaders_run_each_model(paths):
  cfg = demo_assets.resolve_config()
  tr_cfg = cfg["transformer"]
  tok = t5.CogVideoXTokenizer.from_pretrained(paths["pipeline"],
                                              max_length=tr_cfg["max_text_seq_length"])
  ids = tok.encode(cfg["prompts"][:1] + ["An unseen prompt, with 2 numbers & symbols!"])
  assert ids.shape == (2, tr_cfg["max_text_seq_length"])
  unk = tok.tokenizer.unk_token_id
  assert not (ids == unk).any()
  text = t5.load_encoder(paths["text_encoder"])(jnp.asarray(ids))
  assert text.shape == (2, tr_cfg["max_text_seq_length"], tr_cfg["text_embed_dim"])

  transformer = cogvideox.load_transformer(paths["pipeline"])
  latents = jax.random.normal(jax.random.key(0), (2, 2, tr_cfg["in_channels"], 4, 6))
  v = transformer(latents, text, jnp.array([999, 10]))
  assert v.shape == latents.shape and bool(jnp.isfinite(v).all())

  vae = cogvideox.load_vae(paths["pipeline"])
  video = vae.decode(latents[:1].transpose(0, 2, 1, 3, 4)[:, :, :1])  # [1, C, 1, 4, 6]
  assert video.shape == (1, 3, 1, 32, 48) and bool(jnp.isfinite(video).all())

  judge = critic.Critic.load(paths["critic"])
  assert judge.template.name == "vicuna_v1"
  frames = np.random.default_rng(0).integers(0, 256, (9, 40, 60, 3), dtype=np.uint8)
  probs = judge.label_probs([frames], ["A cat jumps onto a windowsill."], "motion issues")
  assert probs.shape == (1, 3) and np.isfinite(probs).all() and (probs > 0).all()

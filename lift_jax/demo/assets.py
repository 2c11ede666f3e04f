"""Tiny models in the upstream PyTorch layouts, made without PyTorch, for the CPU demo.

`make_demo_assets(root)` writes what the real LiFT run downloads, at toy sizes:

```
root/
  CogVideoX-5b-tiny/   a diffusers CogVideoXPipeline folder: model_index.json, transformer/
                       (3D RoPE, 5B-style; "pretrained" on the demo's world, `demo.world`),
                       vae/ (4 blocks: the real 4x temporal / 8x spatial compression;
                       "readable": its weights set so that latent channels 0-2 are the
                       pixels' colour, `demo.readable_vae`), text_encoder/ (T5
                       v1.1-style), tokenizer/ (a sentencepiece unigram model trained here,
                       saved as transformers' T5Tokenizer),
                       scheduler/ (5B's settings)
  VILA1.5-13b-tiny/    a VILA-1.5-13B-style critic: config.json, llm/ (Llama + a sentencepiece BPE
                       tokenizer with byte fallback, like Vicuna's), vision_tower/ (SigLIP;
                       "readable": each token carries its patch's colour, `demo.readable_critic`),
                       mm_projector/ (mlp_downsample); the vicuna_v1 template follows from the name
  prompts.txt          the demo prompts, one a line
  demo_assets.json     the resolved config and the paths (written last: its presence means done)
```

Each model is initialised in our NNX port and written by its `export_*` function, so the demo then
loads them through the same converters and loaders as a published checkpoint. The whole tree is
written under a temporary name and renamed, and a second call with the same settings returns the
existing paths.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax.demo import readable_critic, readable_vae
from lift_jax.demo import world as world_lib
from lift_jax.diffusion.schedule import NoiseSchedule
from lift_jax.models import cogvideox, critic, llama, siglip, t5
from lift_jax.models.cogvideox.vae_params import export_vae
from lift_jax.models.critic import prompts as critic_prompts
from lift_jax.models.critic.export import export_vila
from lift_jax.models.t5.params import export_encoder
from lift_jax.models.t5.tokenizer import CogVideoXTokenizer

MANIFEST = "demo_assets.json"
FORMAT_VERSION = 3
PIPELINE_DIR = "CogVideoX-5b-tiny"
CRITIC_DIR = "VILA1.5-13b-tiny"

DEMO_PROMPTS = (
    "A panda eats bamboo in a snowy forest.",
    "Two horses run across a wet beach at dusk.",
    "A red kite flies above green hills on a windy day.",
    "A chef slices tomatoes on a wooden board in a bright kitchen.",
    "A small boat drifts on a calm lake under a full moon.",
    "A cat jumps from a sofa onto a sunny windowsill.",
)

# Sizes for 2 CPU cores; every field is the upstream config's own name.
DEFAULTS: dict[str, Any] = {
    # The models' seed; None: the run's. A set seed keeps one world (base model, critic) across
    # runs with different seeds, as a published checkpoint would.
    "seed": None,
    # diffusers CogVideoXTransformer3DModel (5B-style: 3D RoPE, no learned positions).
    "transformer": dict(num_attention_heads=4, attention_head_dim=16, num_layers=4, in_channels=16,
                        out_channels=16, time_embed_dim=64, text_embed_dim=64,
                        max_text_seq_length=226, sample_height=16, sample_width=24, sample_frames=9,
                        use_rotary_positional_embeddings=True),
    # diffusers AutoencoderKLCogVideoX: 4 blocks as upstream, tiny widths; 5B's scaling factor.
    "vae": dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4,
                scaling_factor=0.7),
    # The VAE's weights set so that pixels = gain x latent channels 0-2 (None: random weights).
    "readable_vae": dict(gain=0.5),
    # The transformer pretrained on the demo's world (`demo.world`; steps 0: random weights), for
    # videos of num_frames x height x width and captions of text_length T5 tokens (the demo's
    # generate and prepare settings).
    "world": dict(steps=600, lr=3e-3, batch_size=32, seed=0, num_frames=9, height=16, width=16,
                  text_length=40, level=0.5, warmth=0.5, flicker=0.8, detail=0.1),
    # transformers T5EncoderModel (v1.1: gated GELU); d_model follows text_embed_dim.
    "text_encoder": dict(d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                         feed_forward_proj="gated-gelu"),
    # Trained here; vocab_size is a target (the pieces the text supports, at most this).
    "tokenizer": dict(vocab_size=384, extra_ids=100),
    "critic": {
        # transformers SiglipVisionModel: 56 px / patch 14 = 4x4 tokens -> 2x2 after the merge.
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=56, patch_size=14),
        # transformers LlamaForCausalLM (Vicuna-style: MHA, untied head); vocab from the tokenizer.
        "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=2048),
        "tokenizer": dict(vocab_size=1024),
        "num_video_frames": 8,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        # The tower's weights set so that each token carries its patch's colour (None: random).
        "readable_tower": dict(gain=4.0, level=1.0),
    },
}

# CogVideoX-5B's scheduler/scheduler_config.json (2B differs only in snr_shift_scale=3.0).
SCHEDULER_5B = {
    "_class_name": "CogVideoXDDIMScheduler", "_diffusers_version": "0.30.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "clip_sample_range": 1.0, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "sample_max_value": 1.0,
    "set_alpha_to_one": True, "snr_shift_scale": 1.0, "steps_offset": 0,
    "timestep_spacing": "trailing", "trained_betas": None,
}
MODEL_INDEX = {
    "_class_name": "CogVideoXPipeline", "_diffusers_version": "0.30.0.dev0",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLCogVideoX"],
}

# Text the tokenizers learn besides the prompts: the critic's prompt and answer vocabulary.
_ANSWERS = (
    "Good. Basically correct.", "Good. The video matches the caption.",
    "Normal. The motion is a little jerky.", "Normal. Some details are blurry.",
    "Bad. The subject is deformed.", "Bad. The object count is wrong and the colors differ.",
)
_TEXT = (
    "A video of animals, people, vehicles and landscapes in daylight, at night, in rain and snow.",
    "The camera pans slowly to the left while a person walks along a city street.",
    "A dog runs through a field of yellow flowers, its ears flapping in the wind.",
    "Waves crash against the rocks as seagulls circle overhead.",
    # Every printable ASCII character, so unseen prompts never need <unk> in the T5 vocabulary.
    " ".join(chr(c) for c in range(33, 127)),
)


# ----------------------------------------------------------------------------- config


def _plain(value):
  """ConfigDicts, tuples and mappings -> JSON-friendly dicts and lists."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _merge(base: dict, over: Mapping) -> dict:
  out = copy.deepcopy(base)
  for key, value in over.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = copy.deepcopy(value)
  return out


def _read_prompts(spec) -> list[str]:
  """Prompts (the tokenizers' training text) from a prompt file, a list of files, or a list of
  prompts; `#` lines in files are comments, as in the LiFT prompt files."""
  if not spec:
    return []
  items = [spec] if isinstance(spec, str) else list(spec)
  out = []
  for item in items:
    if isinstance(item, str) and os.path.isfile(item):
      with open(item, encoding="utf-8") as f:
        out += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    elif isinstance(item, str):
      out.append(item)
    else:
      raise TypeError(f"prompts: expected prompt strings or prompt file paths, got {item!r}")
  return out


def resolve_config(config: Mapping | None = None) -> dict[str, Any]:
  """DEFAULTS overridden by `config` (a dict or ConfigDict; only the keys of DEFAULTS and
  `prompts` are read), with the coupled sizes filled in: T5's width is the transformer's
  `text_embed_dim`, the VAE's latent channels its `in_channels` (vocabulary sizes follow the
  tokenizers when they are trained)."""
  config = _plain(config or {})
  over = {k: v for k, v in config.items() if k in DEFAULTS}
  cfg = _merge(DEFAULTS, over)
  cfg["prompts"] = _read_prompts(config.get("prompts")) or list(DEMO_PROMPTS)
  tr, te, vae = cfg["transformer"], cfg["text_encoder"], cfg["vae"]
  width = tr.get("text_embed_dim", 64)
  if te.setdefault("d_model", width) != width:
    raise ValueError(f"text_encoder.d_model={te['d_model']} must equal "
                     f"transformer.text_embed_dim={width} (the transformer reads T5's states)")
  latent = tr.get("in_channels", 16)
  if vae.setdefault("latent_channels", latent) != latent:
    raise ValueError(f"vae.latent_channels={vae['latent_channels']} must equal "
                     f"transformer.in_channels={latent} (a text-to-video model denoises latents)")
  spatial = 2 ** (len(vae["block_out_channels"]) - 1)
  vae.setdefault("sample_height", tr.get("sample_height", 60) * spatial)
  vae.setdefault("sample_width", tr.get("sample_width", 90) * spatial)
  return cfg


# ----------------------------------------------------------------------------- tokenizers


def _train_sentencepiece(lines: list[str], **options) -> bytes:
  """A sentencepiece model trained in memory; one thread so the result is reproducible."""
  import sentencepiece as spm

  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, num_threads=1,
                                 minloglevel=2, **options)
  return buf.getvalue()


def _corpus(prompts: list[str]) -> list[str]:
  questions = list(critic_prompts.QUESTIONS.values())
  system = [critic_prompts.VICUNA_V1.system, "USER: ASSISTANT:"]
  # Repeats weight the fixed prompt text, so it becomes whole-word pieces (short sequences).
  return list(prompts) * 4 + (questions + system) * 4 + list(_ANSWERS) * 2 + list(_TEXT)


def write_t5_tokenizer(dst: str, lines: list[str], *, vocab_size: int, extra_ids: int,
                       max_length: int) -> int:
  """A T5-style unigram sentencepiece model (<pad>=0, </s>=1, <unk>=2, NFKC) saved with
  `T5Tokenizer.save_pretrained`, as a pipeline's `tokenizer/` holds it. Returns its length."""
  from transformers import T5Tokenizer

  model = _train_sentencepiece(lines, model_type="unigram", vocab_size=vocab_size,
                               hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(dst, "spiece.model"), "wb") as f:
    f.write(model)
  tok = T5Tokenizer.from_pretrained(dst, extra_ids=extra_ids, model_max_length=max_length)
  tok.save_pretrained(dst)
  return len(tok)


def write_llama_tokenizer(dst: str, lines: list[str], *, vocab_size: int,
                          max_length: int) -> int:
  """A Llama/Vicuna-style BPE sentencepiece model (<unk>=0, <s>=1, </s>=2, then the 256 byte
  fallbacks; no normalisation, digits split) saved with `LlamaTokenizer.save_pretrained`, with
  VILA's settings (BOS added, pad = <unk>). Returns its length."""
  from transformers import LlamaTokenizer

  model = _train_sentencepiece(
      lines, model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False, unk_id=0, bos_id=1,
      eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True, character_coverage=1.0)
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(dst, "tokenizer.model"), "wb") as f:
    f.write(model)
  tok = LlamaTokenizer.from_pretrained(dst, add_bos_token=True, add_eos_token=False,
                                       pad_token="<unk>", legacy=False,
                                       model_max_length=max_length)
  tok.save_pretrained(dst)
  return len(tok)


# ----------------------------------------------------------------------------- models


def _rngs(seed: int):
  """`rbg` keys: eager init compiles several times faster on CPU than with threefry."""

  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def write_pipeline(dst: str, cfg: dict[str, Any], seed: int) -> None:
  """The CogVideoX pipeline folder (see the module doc)."""

  os.makedirs(dst)
  tr_cfg = cogvideox.CogVideoXConfig.from_diffusers_config(cfg["transformer"])
  tr_cfg.validate()
  n = write_t5_tokenizer(os.path.join(dst, "tokenizer"), _corpus(cfg["prompts"]),
                         vocab_size=cfg["tokenizer"]["vocab_size"],
                         extra_ids=cfg["tokenizer"]["extra_ids"],
                         max_length=tr_cfg.max_text_seq_length)
  te = dict(cfg["text_encoder"])
  te.setdefault("vocab_size", -(-n // 8) * 8)  # room for every id, rounded like T5's 32128
  if te["vocab_size"] < n:
    raise ValueError(f"text_encoder.vocab_size={te['vocab_size']} < the tokenizer's {n} ids")
  cfg["text_encoder"] = te
  vae_cfg = cogvideox.CogVideoXVAEConfig.from_diffusers_config(cfg["vae"])
  vae_cfg.validate()
  vae = cogvideox.AutoencoderKLCogVideoX(vae_cfg, rngs=_rngs(seed + 1))
  if cfg["readable_vae"].get("gain"):
    readable_vae.make_readable(vae, float(cfg["readable_vae"]["gain"]))
  export_vae(vae, os.path.join(dst, "vae"))
  encoder = t5.T5Encoder(t5.T5Config.from_hf_config(te), rngs=_rngs(seed + 2))
  export_encoder(encoder, os.path.join(dst, "text_encoder"))
  transformer = cogvideox.CogVideoXTransformer3D(tr_cfg, rngs=_rngs(seed))
  if cfg["world"]["steps"]:
    transformer = _pretrain(transformer, encoder, os.path.join(dst, "tokenizer"), vae_cfg, cfg)
  cogvideox.export_diffusers(transformer, os.path.join(dst, "transformer"))
  os.makedirs(os.path.join(dst, "scheduler"))
  _write_json(os.path.join(dst, "scheduler", "scheduler_config.json"), SCHEDULER_5B)
  _write_json(os.path.join(dst, "model_index.json"), MODEL_INDEX)


def _pretrain(transformer, encoder, tokenizer_dir: str, vae_cfg, cfg: dict[str, Any]):
  """The transformer taught `demo.world`, with the demo's captions (and "") as its text."""
  from transformers import T5Tokenizer  # AutoTokenizer would import torch where it is installed

  w = cfg["world"]
  tokenizer = CogVideoXTokenizer(T5Tokenizer.from_pretrained(tokenizer_dir),
                                 max_length=int(w["text_length"]))
  ids = tokenizer.encode(list(cfg["prompts"]) + [""])
  text = np.asarray(nnx.jit(encoder, graph_updates=False)(jnp.asarray(ids)), np.float32)
  spatial = vae_cfg.spatial_compression_ratio
  latent_shape = ((int(w["num_frames"]) - 1) // vae_cfg.temporal_compression_ratio + 1,
                  vae_cfg.latent_channels, int(w["height"]) // spatial, int(w["width"]) // spatial)
  shape = world_lib.World(**{k: float(w[k]) for k in ("level", "warmth", "flicker", "detail")})
  return world_lib.pretrain(
      transformer, text, latent_shape, world=shape, scaling_factor=vae_cfg.scaling_factor,
      schedule=NoiseSchedule.from_diffusers_config(SCHEDULER_5B), steps=int(w["steps"]),
      lr=float(w["lr"]), batch_size=int(w["batch_size"]), seed=int(w["seed"]))


def write_critic(dst: str, cfg: dict[str, Any], seed: int, workdir: str) -> None:
  """The VILA-1.5 critic folder (see the module doc)."""

  c = cfg["critic"]
  llm = dict(c["llm"])
  tok_dir = os.path.join(workdir, "critic_tokenizer")
  n = write_llama_tokenizer(tok_dir, _corpus(cfg["prompts"]),
                            vocab_size=c["tokenizer"]["vocab_size"],
                            max_length=llm["max_position_embeddings"])
  llm.setdefault("vocab_size", n)
  if llm["vocab_size"] < n:
    raise ValueError(f"critic.llm.vocab_size={llm['vocab_size']} < the tokenizer's {n} ids")
  llm.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
  c["llm"] = llm
  vision = siglip.SiglipVisionConfig.from_hf_config(c["vision"])
  vila_cfg = critic.VilaConfig(
      llm=llama.LlamaConfig.from_hf_config(llm), vision=vision,
      image=siglip.ImageProcessor(height=vision.image_size, width=vision.image_size),
      select_layer=int(c["mm_vision_select_layer"]),
      select_feature=c["mm_vision_select_feature"], num_video_frames=int(c["num_video_frames"]),
      template="vicuna_v1")
  model = critic.VilaCritic(vila_cfg, rngs=_rngs(seed + 3))
  if c.get("readable_tower"):
    readable_critic.make_readable(model.vision, **c["readable_tower"])
  export_vila(model, dst, tok_dir)


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


# ----------------------------------------------------------------------------- entry point


def _paths(root: str) -> dict[str, str]:
  pipe = os.path.join(root, PIPELINE_DIR)
  return {"root": root, "pipeline": pipe,
          **{sub: os.path.join(pipe, sub)
             for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")},
          "critic": os.path.join(root, CRITIC_DIR), "prompts": os.path.join(root, "prompts.txt")}


def model_paths(root: str) -> dict[str, str]:
  """Where `make_demo_assets(root)` puts each model (the runner's `model_factory` contract)."""
  return _paths(os.path.abspath(root))


def make_models(root: str, seed: int = 0, *, config: Mapping | None = None) -> dict[str, str]:
  """The runner's `model_factory` entry point: `make_demo_assets`."""
  return make_demo_assets(root, seed, config=config)


def _fingerprint(cfg: dict[str, Any], seed: int) -> str:
  blob = json.dumps({"version": FORMAT_VERSION, "seed": seed, "config": cfg}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _existing(root: str, fingerprint: str) -> dict[str, str] | None:
  try:
    with open(os.path.join(root, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  paths = _paths(root)
  if manifest.get("fingerprint") != fingerprint or not all(
      os.path.exists(p) for p in paths.values()):
    return None
  return paths


def make_demo_assets(root: str, seed: int = 0, *, config: Mapping | None = None,
                     overwrite: bool = False) -> dict[str, str]:
  """Creates (or finds) the demo's upstream-layout models under `root`; returns their paths:

  `root`, `pipeline` (the diffusers CogVideoX folder), its `transformer`, `vae`, `text_encoder`,
  `tokenizer`, `scheduler` subfolders, `critic` (the VILA folder) and `prompts` (prompts.txt).

  `config` overrides `DEFAULTS` (see `resolve_config`). `root` belongs to the assets: built assets
  with other settings are replaced; a non-empty folder that is not ours raises unless `overwrite`.
  No PyTorch is imported.
  """
  root = os.path.abspath(root)
  cfg = resolve_config(config)
  seed = seed if cfg["seed"] is None else int(cfg["seed"])
  fingerprint = _fingerprint(cfg, seed)
  found = _existing(root, fingerprint)
  if found:
    return found
  if (os.path.isdir(root) and os.listdir(root) and not overwrite
      and not os.path.isfile(os.path.join(root, MANIFEST))):
    raise FileExistsError(f"{root} exists and does not hold demo assets ({MANIFEST} missing); "
                          "pass another root or overwrite=True")
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
  try:
    write_pipeline(os.path.join(tmp, PIPELINE_DIR), cfg, seed)
    write_critic(os.path.join(tmp, CRITIC_DIR), cfg, seed, os.path.join(tmp, ".work"))
    shutil.rmtree(os.path.join(tmp, ".work"))
    with open(os.path.join(tmp, "prompts.txt"), "w") as f:
      f.write("".join(p + "\n" for p in cfg["prompts"]))
    rel = {k: os.path.relpath(v, root) for k, v in _paths(root).items()}
    _write_json(os.path.join(tmp, MANIFEST), {"version": FORMAT_VERSION, "seed": seed,
                                              "fingerprint": fingerprint, "config": cfg,
                                              "paths": rel})
    if os.path.exists(root):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=parent)
      os.replace(root, os.path.join(old, "assets"))
      shutil.rmtree(old, ignore_errors=True)
    try:
      os.replace(tmp, root)
    except OSError:
      found = _existing(root, fingerprint)  # another process finished the same assets first
      if not found:
        raise
      shutil.rmtree(tmp, ignore_errors=True)
      return found
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return _paths(root)

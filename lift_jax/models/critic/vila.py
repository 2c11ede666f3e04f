"""VILA-1.5, the LiFT-Critic's base model: frames -> vision tower -> mlp_downsample projector ->
spliced into the LLM's prompt embeddings -> Llama.

Two towers, chosen by `vision_tower/config.json`: SigLIP-so400m (VILA1.5-3b/13b: 27x27 tokens, no
CLS, `cls_patch` at layer -2, vicuna_v1) and InternViT-6B-448px-V1-2 (VILA1.5-40b: CLS + 32x32,
`patch` at layer -1 so the CLS is dropped, 2x2 merge to 256 tokens of 4·3200, Yi-34B with GQA,
hermes-2). Both feed the same `mlp_downsample` projector.

Model (`VilaCritic`, an NNX module; pure arrays in, arrays out, jit- and mesh-friendly):
  encode_frames(pixel_values [V,F,3,H,W]) -> [V,F,P',D]   tower `hidden_states[select_layer]`
      (`cls_patch`: all tokens; `patch`: CLS dropped) -> 2x2 merge (zero-padded to an even side)
      -> LayerNorm -> Linear -> GELU -> Linear; each frame on its own, no temporal pooling.
  embed_inputs(pixel_values, token_ids [B,S], image_slots [B,S]) -> [B,S,D]   text embeddings with
      the image tokens written in: `image_slots[b,s] = (v·F + f)·P' + j` takes token j of frame f of
      video v, -1 keeps the text token. Static shapes: the slots are laid out on the host.
  __call__(pixel_values, token_ids, image_slots, attention_mask, last_only=False) -> logits fp32.
      Prompts are left-padded; RoPE positions come from the mask, so a padded row scores as alone.

Host side (`Critic`: model + tokenizer + template; what a scoring tool calls):
  critic = Critic.load(vila_folder, lora=adapter_folder, dtype="bfloat16", mesh=mesh)
  px = critic.pixel_values(video_uint8 [N,H,W,3])        8 frames at linspace(0, N-1, 8), resized
  critic.generate([px, ...], captions, question)          -> list[str] answers ("Good. ...")
  critic.first_token_logits([px, ...], captions, question) -> [B, vocab] logits of the answer's
      first token (one forward, no decoding); critic.label_probs(...) -> [B, 3] P(Good/Normal/Bad)
  critic.ask_all(px, caption, mode="generate"|"logits")  -> {question key: answer or probs}
`question` is a key of `prompts.QUESTIONS` ("semantic consistency", "fidelity issues",
"motion issues") or a free text. Several prompts over the same video share one encoding of its
frames (`video_index`).

Loading: `load_critic(path, lora=None)` reads a VILA folder (config.json, llm/, vision_tower/,
mm_projector/) and, when given, a PEFT LoRA adapter folder merged into the LLM weights as they stream
in (`lora.py`); or a converted checkpoint (kind "vila-critic", `save_critic`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
import tempfile
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lift_jax import layers
from lift_jax.checkpoint import store
from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.checkpoint.tables import Rule, identity, linear, load_from_table
from lift_jax.models import intern_vit as intern_lib
from lift_jax.models import llama as llama_lib
from lift_jax.models import siglip as siglip_lib
from lift_jax.models.critic import lora as lora_lib
from lift_jax.models.critic import prompts
from lift_jax.parallel.mesh import constrain

KIND = "vila-critic"
PROJECTOR_PREFIX = "layers."  # MultimodalProjector.layers = nn.Sequential(...)
TOKENIZER_DIR = "tokenizer"
# Sampling of LiFT's run_critic_*.py: temperature 0.2, no top_p, transformers' default top_k 50.
LIFT_SAMPLING = dict(temperature=0.2, top_k=50, top_p=1.0, max_new_tokens=512)
_TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
                    "merges.txt", "chat_template*")
_TOKENS = ("activation_batch", "activation_length", "activation_embed")
# vision_type -> (config class, tower module class, params module).
_TOWERS = {
    "siglip": (siglip_lib.SiglipVisionConfig, siglip_lib.SiglipVisionModel, siglip_lib.params),
    "intern_vit": (intern_lib.InternVisionConfig, intern_lib.InternVisionModel, intern_lib.params),
}
VisionConfig = siglip_lib.SiglipVisionConfig | intern_lib.InternVisionConfig


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class VilaConfig:
  """The assembled model: LLM and tower configs plus VILA's multimodal settings."""

  llm: llama_lib.LlamaConfig
  vision: VisionConfig
  image: siglip_lib.ImageProcessor = siglip_lib.ImageProcessor()
  vision_type: str = "siglip"
  projector_type: str = "mlp_downsample"
  select_layer: int = -2
  select_feature: str = "cls_patch"
  num_video_frames: int = 8
  template: str = "vicuna_v1"

  @property
  def vision_tokens(self) -> int:
    """Tokens the tower hands the projector per frame: `patch` drops the first (CLS) token,
    as VILA does whatever the tower (so SigLIP, which has no CLS, needs `cls_patch`)."""
    has_cls = self.vision_type != "siglip"
    return self.vision.num_patches + int(has_cls) - int(self.select_feature == "patch")

  @property
  def tokens_per_frame(self) -> int:
    side = math.isqrt(self.vision_tokens)
    return ((side + 1) // 2) ** 2

  def validate(self) -> None:
    if self.vision_type not in _TOWERS:
      raise ValueError(f"vision_type={self.vision_type!r}; expected one of {sorted(_TOWERS)}")
    if not isinstance(self.vision, _TOWERS[self.vision_type][0]):
      raise ValueError(f"vision_type={self.vision_type!r} but the tower config is a "
                       f"{type(self.vision).__name__}")
    if self.projector_type != "mlp_downsample":
      raise ValueError(f"mm_projector_type={self.projector_type!r}: only 'mlp_downsample' (VILA1.5) "
                       "is supported")
    if self.select_feature not in ("patch", "cls_patch"):
      raise ValueError(f"mm_vision_select_feature={self.select_feature!r}: expected 'patch' or "
                       "'cls_patch'")
    if math.isqrt(self.vision_tokens) ** 2 != self.vision_tokens:
      raise ValueError(f"{self.vision_tokens} vision tokens per frame (select_feature="
                       f"{self.select_feature!r}) are not a square grid; the 2x2 merge needs one")
    prompts.get_template(self.template)

  def to_dict(self) -> dict[str, Any]:
    return {"llm": self.llm.to_hf_config(), "vision": self.vision.to_hf_config(),
            "image": self.image.to_config(), "vision_type": self.vision_type,
            "projector_type": self.projector_type, "select_layer": self.select_layer,
            "select_feature": self.select_feature, "num_video_frames": self.num_video_frames,
            "template": self.template}

  @classmethod
  def from_dict(cls, d: dict[str, Any], **runtime) -> "VilaConfig":
    cfg = cls(llm=llama_lib.LlamaConfig.from_hf_config(d["llm"], **runtime),
              vision=_vision_config(d.get("vision_type", "siglip"), d["vision"], runtime),
              image=siglip_lib.ImageProcessor.from_config(d.get("image", {})),
              **{k: d[k] for k in ("vision_type", "projector_type", "select_layer",
                                   "select_feature", "num_video_frames", "template") if k in d})
    cfg.validate()
    return cfg


def _vision_config(vision_type: str, config: dict, runtime: dict) -> VisionConfig:
  if vision_type not in _TOWERS:
    raise ValueError(f"vision tower {vision_type!r}; expected one of {sorted(_TOWERS)}")
  return _TOWERS[vision_type][0].from_hf_config(config, **runtime)


def _image_processor(vision_type: str, folder: str, image_size: int) -> siglip_lib.ImageProcessor:
  """The tower's preprocessing: SigLIP's (mean = std = 0.5) or VILA's InternViT one (ImageNet)."""
  if vision_type == "intern_vit":
    return intern_lib.image_processor(folder, image_size=image_size)
  return siglip_lib.ImageProcessor.load(folder, image_size=image_size)


# ----------------------------------------------------------------------------- modules


def downsample_2x2(x_BPC: jax.Array) -> jax.Array:
  """VILA's `DownSampleBlock`: [B, h·w, C] -> [B, ceil(h/2)·ceil(w/2), 4C], zero-padding odd sides.

  The same view/permute sequence as `flat_square`, so the 4C channels come in VILA's order.
  """
  b, p, c = x_BPC.shape
  side = math.isqrt(p)
  if side * side != p:
    raise ValueError(f"{p} tokens per frame are not a square grid")
  x = x_BPC.reshape(b, side, side, c)
  pad1, pad2 = side % 2, side % 2
  x = jnp.pad(x, ((0, 0), (0, pad1), (0, pad2), (0, 0)))
  d1, d2 = side + pad1, side + pad2
  x = x.reshape(b, d1, d2 // 2, 2 * c).transpose(0, 2, 1, 3)
  x = x.reshape(b, d2 // 2, d1 // 2, 4 * c)
  return x.reshape(b, -1, 4 * c)


class MlpDownsampleProjector(nnx.Module):
  """`mlp_downsample`: 2x2 merge -> LayerNorm(4C) -> Linear(4C, D) -> GELU(erf) -> Linear(D, D)."""

  def __init__(self, vision_dim: int, llm_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm = layers.LayerNorm(4 * vision_dim, eps=1e-5, **kw)  # torch's default eps
    self.linear_1 = layers.Dense(4 * vision_dim, llm_dim, axes=("mlp", "embed"), rngs=rngs, **kw)
    self.linear_2 = layers.Dense(llm_dim, llm_dim, axes=("embed", "mlp"), rngs=rngs, **kw)

  def __call__(self, x_BPC: jax.Array) -> jax.Array:
    x = downsample_2x2(x_BPC)
    x = self.linear_1(self.norm(x))
    return self.linear_2(layers.activation("gelu")(x))


class VilaCritic(nnx.Module):
  """Vision tower + projector + LLM; see the module doc for the calls."""

  def __init__(self, cfg: VilaConfig, *, rngs: nnx.Rngs, tokenizer_path: str | None = None):
    cfg.validate()
    self.config = cfg
    self.tokenizer_path = tokenizer_path
    self.vision = _TOWERS[cfg.vision_type][1](cfg.vision, rngs=rngs)
    self.projector = MlpDownsampleProjector(
        cfg.vision.hidden_size, cfg.llm.hidden_size, dtype=jnp.dtype(cfg.llm.dtype),
        param_dtype=jnp.dtype(cfg.llm.param_dtype), rngs=rngs)
    self.llm = llama_lib.LlamaForCausalLM(cfg.llm, rngs=rngs)

  def encode_frames(self, pixel_values: jax.Array) -> jax.Array:
    """`[V,F,3,H,W] -> [V,F,P',D]`: every frame's image tokens in the LLM's width."""
    cfg = self.config
    if pixel_values.ndim != 5:
      raise ValueError(f"pixel_values must be [videos, frames, 3, H, W], got "
                       f"{tuple(pixel_values.shape)}")
    v, f = pixel_values.shape[:2]
    with jax.named_scope("vision"):
      feats = self.vision.features(pixel_values.reshape(v * f, *pixel_values.shape[2:]),
                                   layer=cfg.select_layer)
      if cfg.select_feature == "patch":
        feats = feats[:, 1:]
    with jax.named_scope("projector"):
      tokens = self.projector(feats)
    return tokens.reshape(v, f, *tokens.shape[1:])

  def embed_inputs(self, pixel_values: jax.Array, token_ids: jax.Array,
                   image_slots: jax.Array) -> jax.Array:
    """Prompt embeddings `[B,S,D]` with every image slot replaced by its frame token."""
    text = self.llm.embed(jnp.where(image_slots >= 0, 0, token_ids))
    images = self.encode_frames(pixel_values)
    pool = images.reshape(-1, images.shape[-1]).astype(text.dtype)
    with jax.named_scope("splice"):
      gathered = jnp.take(pool, jnp.clip(image_slots, 0, pool.shape[0] - 1), axis=0)
      return constrain(jnp.where(image_slots[..., None] >= 0, gathered, text), _TOKENS)

  def __call__(self, pixel_values: jax.Array, token_ids: jax.Array, image_slots: jax.Array,
               attention_mask: jax.Array, *, last_only: bool = False) -> jax.Array:
    """Logits `[B,S,V]` (or `[B,1,V]` at the last position) of left-padded spliced prompts."""
    embeds = self.embed_inputs(pixel_values, token_ids, image_slots)
    mask = attention_mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
    h = self.llm.hidden_states(attention_mask=mask, position_ids=positions, inputs_embeds=embeds)
    return self.llm.head(h[:, -1:] if last_only else h)


# ----------------------------------------------------------------------------- host-side inputs


def sample_frame_indices(num_frames_in_video: int, num: int = prompts.NUM_FRAMES) -> np.ndarray:
  """`np.linspace(0, n - 1, num, dtype=int)`, VILA's `opencv_extract_frames` (repeats when n < num)."""
  if num_frames_in_video < 1:
    raise ValueError("the video has no frames")
  return np.linspace(0, num_frames_in_video - 1, num, dtype=int)


def sample_frames(video: np.ndarray, num: int = prompts.NUM_FRAMES) -> np.ndarray:
  """`[N,H,W,3]` uint8 RGB frames -> the `num` frames the critic sees."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"video must be [frames, H, W, 3] RGB, got {video.shape}")
  return video[sample_frame_indices(len(video), num)]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Left-padded prompts with their image slots laid out (see `VilaCritic.embed_inputs`)."""

  token_ids: np.ndarray  # [B, S] int32; 0 at image slots and padding
  image_slots: np.ndarray  # [B, S] int32; -1 for text and padding
  attention_mask: np.ndarray  # [B, S] bool
  prompts: tuple[str, ...]


def build_batch(tokenizer, texts: Sequence[str], video_index: Sequence[int], *, num_frames: int,
                tokens_per_frame: int, pad_to_multiple: int = 8) -> PromptBatch:
  """Tokenizes prompts (`prompts.tokenize_prompt`) and expands each `<image>` into its slots.

  The k-th `<image>` of prompt b is frame k of video `video_index[b]`. The length is rounded up to
  `pad_to_multiple` so nearby prompt lengths share one compiled program.
  """
  if len(texts) != len(video_index):
    raise ValueError(f"{len(texts)} prompts but {len(video_index)} video indices")
  rows = []
  for text, v in zip(texts, video_index):
    ids = prompts.tokenize_prompt(tokenizer, text)
    n_img = sum(1 for i in ids if i == prompts.IMAGE_TOKEN_INDEX)
    if n_img != num_frames:
      raise ValueError(f"prompt has {n_img} <image> slots but the critic feeds {num_frames} "
                       f"frames per video: {text[:80]!r}...")
    tok, slot, k = [], [], 0
    for i in ids:
      if i == prompts.IMAGE_TOKEN_INDEX:
        base = (v * num_frames + k) * tokens_per_frame
        tok += [0] * tokens_per_frame
        slot += list(range(base, base + tokens_per_frame))
        k += 1
      else:
        tok.append(i)
        slot.append(-1)
    rows.append((tok, slot))
  length = max(len(t) for t, _ in rows)
  length = -(-length // pad_to_multiple) * pad_to_multiple
  b = len(rows)
  token_ids = np.zeros((b, length), np.int32)
  image_slots = np.full((b, length), -1, np.int32)
  mask = np.zeros((b, length), bool)
  for r, (tok, slot) in enumerate(rows):
    token_ids[r, length - len(tok):] = tok
    image_slots[r, length - len(slot):] = slot
    mask[r, length - len(tok):] = True
  return PromptBatch(token_ids, image_slots, mask, tuple(texts))


# ----------------------------------------------------------------------------- loading


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: missing (expected {what})")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as err:
    raise CheckpointError(f"{path}: unreadable ({err})") from err


def _vision_type(config: dict) -> str:
  model_type = config.get("model_type", "")
  archs = " ".join(config.get("architectures") or [])
  if "siglip" in model_type or "Siglip" in archs or "vision_config" in config:
    return "siglip"
  if "intern" in model_type.lower() or "Intern" in archs:
    return "intern_vit"
  raise CheckpointError(f"unknown vision tower (model_type={model_type!r}, architectures="
                        f"{archs!r})")


def infer_template(path: str, llm_cfg: llama_lib.LlamaConfig) -> str:
  """VILA's name mapping first (vila1.5-13b -> vicuna_v1, -40b -> hermes-2), else by the LLM:
  the Yi-34B tokenizer (64000 ids) was trained with hermes-2, Vicuna's with vicuna_v1."""
  name = os.path.basename(os.path.normpath(path)).lower()
  for key, mode in prompts.MODE_BY_MODEL_NAME.items():
    if key in name:
      return mode
  return "hermes-2" if llm_cfg.vocab_size == 64000 else "vicuna_v1"


def vila_config(path: str, *, template: str | None = None, **runtime) -> VilaConfig:
  """The assembled config of a VILA folder or a converted critic, with runtime overrides."""
  if store.is_converted(path):
    meta = store.read_meta(path)
    if meta["kind"] != KIND:
      raise CheckpointError(f"{path}: holds a {meta['kind']!r} checkpoint, not {KIND!r}")
    config = dict(meta["config"])
    if template:
      config["template"] = template
    try:
      return VilaConfig.from_dict(config, **runtime)
    except (TypeError, ValueError, KeyError) as err:
      raise CheckpointError(f"{os.path.join(path, store.META_FILE)}: {err}") from err
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: VILA folder does not exist")
  top = _read_json(os.path.join(path, "config.json"), "VILA's top-level config.json")
  for sub in ("llm", "vision_tower", "mm_projector"):
    if not os.path.isdir(os.path.join(path, sub)):
      raise CheckpointError(f"{path}: not a VILA folder (no {sub}/ subfolder)")
  where = os.path.join(path, "config.json")
  if top.get("mm_use_im_start_end"):
    raise CheckpointError(f"{where}: mm_use_im_start_end=True is not supported (VILA1.5 uses False)")
  if top.get("s2"):
    raise CheckpointError(f"{where}: s2=True (multi-scale tower) is not supported")
  aspect = top.get("image_aspect_ratio", "resize")
  if aspect != "resize":
    raise CheckpointError(f"{where}: image_aspect_ratio={aspect!r}; only 'resize' (VILA1.5) is "
                          "supported")
  llm_where = os.path.join(path, "llm", "config.json")
  vision_where = os.path.join(path, "vision_tower", "config.json")
  vision_cfg = _read_json(vision_where, "the vision tower's config.json")
  projector = {}
  if os.path.isfile(os.path.join(path, "mm_projector", "config.json")):
    projector = _read_json(os.path.join(path, "mm_projector", "config.json"), "a config")
  projector_type = (projector.get("mm_projector_type")
                    or (top.get("mm_projector_cfg") or {}).get("mm_projector_type")
                    or top.get("mm_projector_type") or top.get("mm_projector"))
  try:
    llm_cfg = llama_lib.LlamaConfig.from_hf_config(_read_json(llm_where, "the LLM's config.json"),
                                                   **runtime)
  except (TypeError, ValueError) as err:
    raise CheckpointError(f"{llm_where}: {err}") from err
  try:
    vision_type = _vision_type(vision_cfg)
    vision = _vision_config(vision_type, vision_cfg, runtime)
  except (TypeError, ValueError) as err:
    raise CheckpointError(f"{vision_where}: {err}") from err
  image = _image_processor(vision_type, os.path.join(path, "vision_tower"), vision.image_size)
  try:
    cfg = VilaConfig(llm=llm_cfg, vision=vision, image=image, vision_type=vision_type,
                     projector_type=projector_type or "",
                     select_layer=int(top.get("mm_vision_select_layer", -2)),
                     select_feature=top.get("mm_vision_select_feature", "patch"),
                     num_video_frames=int(top.get("num_video_frames", prompts.NUM_FRAMES)),
                     template=template or infer_template(path, llm_cfg))
    cfg.validate()
  except ValueError as err:
    raise CheckpointError(f"{where}: {err}") from err
  return cfg


class JoinedWeights:
  """Several weight folders seen as one, keys spelled `<part>/<key>`."""

  def __init__(self, root: str, parts: dict[str, Any]):
    self.folder = root
    self._parts = parts

  def _split(self, key: str):
    part, _, inner = key.partition("/")
    return self._parts[part], inner

  def keys(self) -> list[str]:
    return [f"{p}/{k}" for p, f in self._parts.items() for k in f.keys()]

  def __contains__(self, key: str) -> bool:
    part, _, inner = key.partition("/")
    return part in self._parts and inner in self._parts[part]

  def shape(self, key: str):
    folder, inner = self._split(key)
    return folder.shape(inner)

  def read(self, key: str):
    folder, inner = self._split(key)
    return folder.read(inner)


def projector_rules() -> list[Rule]:
  return [Rule("1.weight", "norm.scale", identity), Rule("1.bias", "norm.bias", identity),
          Rule("2.weight", "linear_1.kernel", linear), Rule("2.bias", "linear_1.bias", identity),
          Rule("4.weight", "linear_2.kernel", linear), Rule("4.bias", "linear_2.bias", identity)]


def critic_rules(cfg: VilaConfig) -> list[Rule]:
  """The three tables, prefixed: `llm/…` -> `llm.…`, `vision/…` -> `vision.…`, `projector/…`."""
  tables = (("llm", llama_lib.llama_rules(cfg.llm)),
            ("vision", _TOWERS[cfg.vision_type][2].vision_rules(cfg.vision)),
            ("projector", projector_rules()))
  return [Rule(f"{part}/{r.src}", f"{part}.{r.dst}", r.transform)
          for part, rules in tables for r in rules]


def critic_ignored(cfg: VilaConfig) -> tuple[str, ...]:
  from lift_jax.models.llama import params as llama_params
  return (tuple(f"llm/{p}" for p in llama_params.ignored_keys(cfg.llm))
          + tuple(f"vision/{p}" for p in _TOWERS[cfg.vision_type][2].IGNORED))


def load_critic(path: str, lora: str | None = None, *, dtype: str = "float32",
                param_dtype: str | None = None, mesh: Mesh | None = None, remat: str = "none",
                attention_impl: str = "auto", template: str | None = None,
                progress: bool = False) -> VilaCritic:
  """Loads VILA (tower, projector, LLM) from `path`, merging the LoRA adapter at `lora` if given.

  `path` is a VILA folder or a converted checkpoint (kind "vila-critic", LoRA already merged).
  `dtype` is the compute dtype; parameters are stored in `param_dtype` (default: `dtype`). With a
  `mesh`, each parameter is placed directly onto its shards. `template` overrides the inferred
  conversation template ("vicuna_v1" for 13B, "hermes-2" for 40B).
  """
  runtime = dict(dtype=dtype, param_dtype=param_dtype or dtype, remat=remat,
                 attention_impl=attention_impl)
  cfg = vila_config(path, template=template, **runtime)
  if store.is_converted(path):
    if lora:
      raise CheckpointError(f"{path}: a converted critic already has its LoRA merged; convert "
                            "again from the VILA folder with --lora to change it")
    tok = os.path.join(path, TOKENIZER_DIR)
    make = lambda: VilaCritic(cfg, rngs=nnx.Rngs(0),
                              tokenizer_path=tok if os.path.isdir(tok) else None)
    return store.restore_model(path, make, mesh=mesh)
  llm_weights = WeightFolder(os.path.join(path, "llm"))
  if lora:
    adapter = lora_lib.LoraAdapter.read(lora)
    leftover = os.path.join(lora, "non_lora_trainables.bin")
    if os.path.isfile(leftover) and os.path.getsize(leftover) > 4096:
      warnings.warn(f"{leftover} ({os.path.getsize(leftover)} bytes) is not applied: only the "
                    "LoRA adapter is merged (LiFT's file holds no trained tensors)")
    llm_weights = lora_lib.LoraMergedWeights(llm_weights, adapter)
  folder = JoinedWeights(path, {
      "llm": llm_weights,
      "vision": _TOWERS[cfg.vision_type][2].weights(os.path.join(path, "vision_tower")),
      "projector": siglip_lib.params.StripPrefix(WeightFolder(os.path.join(path, "mm_projector")),
                                                 PROJECTOR_PREFIX),
  })
  make = lambda: VilaCritic(cfg, rngs=nnx.Rngs(0), tokenizer_path=os.path.join(path, "llm"))
  return load_from_table(make, folder, critic_rules(cfg), mesh=mesh, ignore=critic_ignored(cfg),
                         progress=progress)


def save_critic(model: VilaCritic, dst: str, *, overwrite: bool = False) -> str:
  """Writes a converted checkpoint (parameters, config, and the tokenizer files) atomically."""
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  inner = os.path.join(tmp, "critic")
  try:
    store.save_model(inner, KIND, model.config.to_dict(), model)
    if model.tokenizer_path and os.path.isdir(model.tokenizer_path):
      out = os.path.join(inner, TOKENIZER_DIR)
      os.makedirs(out)
      for pattern in _TOKENIZER_FILES:
        for f in glob.glob(os.path.join(model.tokenizer_path, pattern)):
          if os.path.isfile(f):
            shutil.copy2(f, out)
    if os.path.exists(dst):
      shutil.rmtree(dst)
    os.replace(inner, dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dst


def load_tokenizer(path: str):
  """The critic's tokenizer: `llm/` of a VILA folder, `tokenizer/` of a converted one; a
  SentencePiece `tokenizer.model` is read with the slow semantics VILA uses (`llama.tokenizer`)."""
  try:
    from transformers import AutoTokenizer
  except ImportError as err:
    raise ImportError("the critic's tokenizer needs `transformers` (and `sentencepiece` for "
                      "Llama tokenizers)") from err
  from lift_jax.models.llama import tokenizer as sentencepiece_llama

  for sub in (TOKENIZER_DIR, "llm", ""):
    folder = os.path.join(path, sub) if sub else path
    if os.path.isdir(folder) and glob.glob(os.path.join(folder, "tokenizer*")):
      try:
        # VILA reads a SentencePiece model with the slow tokenizer (use_fast=False, legacy=False).
        if sentencepiece_llama.is_sentencepiece_llama(folder):
          return sentencepiece_llama.load(folder)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
      except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({err})") from err
  raise CheckpointError(f"{path}: no tokenizer found (looked in {TOKENIZER_DIR}/, llm/ and the "
                        "folder itself)")


# ----------------------------------------------------------------------------- the critic


@nnx.jit
def _embed(model: VilaCritic, px, ids, slots):
  return model.embed_inputs(px, ids, slots)


@nnx.jit
def _last_logits(model: VilaCritic, px, ids, slots, mask):
  return model(px, ids, slots, mask, last_only=True)[:, -1]


class Critic:
  """A loaded critic with its tokenizer and conversation template (see the module doc)."""

  def __init__(self, model: VilaCritic, tokenizer, template: str | None = None):
    self.model = model
    self.tokenizer = tokenizer
    self.template = prompts.get_template(template or model.config.template)

  @classmethod
  def load(cls, path: str, lora: str | None = None, *, tokenizer=None, template: str | None = None,
           **load_kwargs) -> "Critic":
    model = load_critic(path, lora, template=template, **load_kwargs)
    return cls(model, tokenizer or load_tokenizer(path), template)

  @property
  def config(self) -> VilaConfig:
    return self.model.config

  @property
  def stop_strings(self) -> list[str]:
    return [self.template.stop_string]

  def pixel_values(self, video: np.ndarray) -> np.ndarray:
    """uint8 RGB `[N,H,W,3]` (a whole clip) -> float32 `[F,3,S,S]` (F = num_video_frames)."""
    return self.config.image(sample_frames(video, self.config.num_video_frames))

  def _pixels(self, videos) -> np.ndarray:
    out = []
    for v in videos:
      v = np.asarray(v)
      out.append(self.pixel_values(v) if v.dtype == np.uint8 else v.astype(np.float32))
    px = np.stack(out)
    want = (self.config.num_video_frames, 3, self.config.image.height, self.config.image.width)
    if px.shape[1:] != want:
      raise ValueError(f"pixel values per video must be {want}, got {px.shape[1:]}")
    return px

  def prompts(self, captions: Sequence[str], questions: Sequence[str] | str) -> list[str]:
    if isinstance(questions, str):
      questions = [questions] * len(captions)
    return [prompts.build_prompt(c, q, self.template, self.config.num_video_frames)
            for c, q in zip(captions, questions)]

  def batch(self, captions: Sequence[str], questions: Sequence[str] | str,
            video_index: Sequence[int] | None = None) -> PromptBatch:
    texts = self.prompts(captions, questions)
    return build_batch(self.tokenizer, texts,
                       list(range(len(texts))) if video_index is None else video_index,
                       num_frames=self.config.num_video_frames,
                       tokens_per_frame=self.config.tokens_per_frame)

  def first_token_logits(self, videos, captions: Sequence[str], questions: Sequence[str] | str,
                         video_index: Sequence[int] | None = None) -> np.ndarray:
    """fp32 `[B, vocab]` logits of the answer's first token (one forward pass, no sampling)."""
    b = self.batch(captions, questions, video_index)
    return np.asarray(_last_logits(self.model, jnp.asarray(self._pixels(videos)),
                                   jnp.asarray(b.token_ids), jnp.asarray(b.image_slots),
                                   jnp.asarray(b.attention_mask)))

  def label_probs(self, videos, captions, questions, video_index=None,
                  labels: Sequence[str] = ("Good", "Normal", "Bad")) -> np.ndarray:
    """`[B, len(labels)]` softmax probabilities (over the whole vocabulary) of each label's first
    token; a deterministic, differentiable-in-spirit alternative to sampling the answer."""
    ids = prompts.label_token_ids(self.tokenizer, self.template, labels)
    logits = self.first_token_logits(videos, captions, questions, video_index)
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    return np.exp(np.asarray(logp)[:, [ids[label] for label in labels]])

  def generate(self, videos, captions: Sequence[str], questions: Sequence[str] | str,
               video_index: Sequence[int] | None = None, *, max_new_tokens: int = 512,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               rng: jax.Array | int | None = None) -> list[str]:
    """Answers as text (greedy by default; `**LIFT_SAMPLING` reproduces LiFT's sampling)."""
    b = self.batch(captions, questions, video_index)
    embeds = _embed(self.model, jnp.asarray(self._pixels(videos)), jnp.asarray(b.token_ids),
                    jnp.asarray(b.image_slots))
    stops = llama_lib.stop_sequences(self.tokenizer, self.stop_strings)
    out = llama_lib.generate(self.model.llm, inputs_embeds=embeds, attention_mask=b.attention_mask,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, rng=rng, stop_token_ids=stops,
                             pad_token_id=self.tokenizer.pad_token_id)
    return llama_lib.decode_texts(self.tokenizer, out, self.stop_strings)

  def ask_all(self, video, caption: str, mode: str = "generate", **kw) -> dict[str, Any]:
    """The three LiFT questions about one video (its frames encoded once, one batch of 3).

    mode "generate": answer strings; mode "logits": P(Good/Normal/Bad) arrays per question.
    """
    keys = list(prompts.QUESTION_KEYS)
    args = ([video], [caption] * 3, keys, [0, 0, 0])
    if mode == "generate":
      return dict(zip(keys, self.generate(*args, **kw)))
    if mode == "logits":
      return dict(zip(keys, self.label_probs(*args, **kw)))
    raise ValueError(f"mode must be 'generate' or 'logits', got {mode!r}")

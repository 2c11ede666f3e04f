"""Loading and saving the VILA critic: `load_critic`, `save_critic`, `vila_config`, the tokenizer.

A VILA folder (config.json, llm/, vision_tower/, mm_projector/) is read through the three key
tables joined (`llm/…`, `vision/…`, `projector/…`), with a PEFT LoRA adapter merged into the LLM
weights as they stream in when one is given (`lora.py`); a converted checkpoint (kind
"vila-critic", LoRA already merged) carries the tokenizer files in `tokenizer/`. `VilaSpec` is the
`ModelSpec` of this composite model: the one loader in `checkpoint/spec.py` does the rest.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import warnings

from flax import nnx
from jax.sharding import Mesh

from lift_jax import files
from lift_jax.checkpoint import store
from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule, identity, linear
from lift_jax.checkpoint.views import JoinedWeights, StripPrefix
from lift_jax.models import intern_vit as intern_lib
from lift_jax.models import llama as llama_lib
from lift_jax.models.llama import tokenizer as llama_tokenizer
from lift_jax.models import siglip as siglip_lib
from lift_jax.models.critic import lora as lora_lib
from lift_jax.models.critic import prompts
from lift_jax.models.critic.modeling import TOWERS, VilaConfig, VilaCritic, vision_config

PROJECTOR_PREFIX = "layers."  # MultimodalProjector.layers = nn.Sequential(...)
TOKENIZER_DIR = "tokenizer"
# What `save_pretrained` writes for a tokenizer (slow or fast).
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
                   "merges.txt", "chat_template*", "spiece.model")


# ----------------------------------------------------------------------------- config


def _vision_type(config: dict) -> str:
  model_type = config.get("model_type", "")
  archs = " ".join(config.get("architectures") or [])
  if "siglip" in model_type or "Siglip" in archs or "vision_config" in config:
    return "siglip"
  if "intern" in model_type.lower() or "Intern" in archs:
    return "intern_vit"
  raise CheckpointError(f"unknown vision tower (model_type={model_type!r}, architectures="
                        f"{archs!r})")


def _image_processor(vision_type: str, folder: str, image_size: int) -> siglip_lib.ImageProcessor:
  """The tower's preprocessing: SigLIP's (mean = std = 0.5) or VILA's InternViT one (ImageNet)."""
  if vision_type == "intern_vit":
    return intern_lib.image_processor(folder, image_size=image_size)
  return siglip_lib.ImageProcessor.load(folder, image_size=image_size)


def infer_template(path: str, llm_cfg: llama_lib.LlamaConfig) -> str:
  """VILA's name mapping first (vila1.5-13b -> vicuna_v1, -40b -> hermes-2), else by the LLM:
  the Yi-34B tokenizer (64000 ids) was trained with hermes-2, Vicuna's with vicuna_v1."""
  name = os.path.basename(os.path.normpath(path)).lower()
  for key, mode in prompts.MODE_BY_MODEL_NAME.items():
    if key in name:
      return mode
  return "hermes-2" if llm_cfg.vocab_size == 64000 else "vicuna_v1"


def _check_vila_root(path: str, top: dict) -> None:
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


def upstream_vila_config(path: str, runtime: dict, template: str | None = None) -> VilaConfig:
  """The assembled config of a VILA folder: top-level settings, `llm/` and `vision_tower/`."""
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: VILA folder does not exist")
  top = files.read_json(os.path.join(path, "config.json"), "VILA's top-level config.json")
  _check_vila_root(path, top)
  llm_where = os.path.join(path, "llm", "config.json")
  vision_where = os.path.join(path, "vision_tower", "config.json")
  vision_cfg = files.read_json(vision_where, "the vision tower's config.json")
  projector = {}
  if os.path.isfile(os.path.join(path, "mm_projector", "config.json")):
    projector = files.read_json(os.path.join(path, "mm_projector", "config.json"), "a config")
  projector_type = (projector.get("mm_projector_type")
                    or (top.get("mm_projector_cfg") or {}).get("mm_projector_type")
                    or top.get("mm_projector_type") or top.get("mm_projector"))
  llm_cfg = llama_lib.params.SPEC.parse_config(
      files.read_json(llm_where, "the LLM's config.json"), runtime, llm_where)
  try:
    vision_type = _vision_type(vision_cfg)
    vision = vision_config(vision_type, vision_cfg, runtime)
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
    raise CheckpointError(f"{os.path.join(path, 'config.json')}: {err}") from err
  return cfg


# ----------------------------------------------------------------------------- key tables


def projector_rules() -> list[Rule]:
  return [Rule("1.weight", "norm.scale", identity), Rule("1.bias", "norm.bias", identity),
          Rule("2.weight", "linear_1.kernel", linear), Rule("2.bias", "linear_1.bias", identity),
          Rule("4.weight", "linear_2.kernel", linear), Rule("4.bias", "linear_2.bias", identity)]


def _part_specs(cfg: VilaConfig) -> tuple[tuple[str, ModelSpec], ...]:
  return (("llm", llama_lib.params.SPEC), ("vision", TOWERS[cfg.vision_type][2].SPEC))


def critic_rules(cfg: VilaConfig) -> list[Rule]:
  """The three tables, prefixed: `llm/…` -> `llm.…`, `vision/…` -> `vision.…`, `projector/…`."""
  tables = [(part, spec.rules(getattr(cfg, part))) for part, spec in _part_specs(cfg)]
  tables.append(("projector", projector_rules()))
  return [Rule(f"{part}/{r.src}", f"{part}.{r.dst}", r.transform)
          for part, rules in tables for r in rules]


def critic_ignored(cfg: VilaConfig) -> tuple[str, ...]:
  return tuple(f"{part}/{p}" for part, spec in _part_specs(cfg)
               for p in spec.ignored(getattr(cfg, part)))


def _tokenizer_dir(path: str) -> str | None:
  """Where the tokenizer of a VILA folder (`llm/`) or a converted critic (`tokenizer/`) is."""
  if store.is_converted(path):
    tok = os.path.join(path, TOKENIZER_DIR)
    return tok if os.path.isdir(tok) else None
  return os.path.join(path, "llm")


# ----------------------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class VilaSpec(ModelSpec):
  """The critic as one `ModelSpec`: config assembled from the VILA folder, weights joined from its
  three parts (LoRA merged into the LLM's), the tokenizer carried into converted checkpoints."""

  def upstream_config(self, path: str, runtime: dict, options: dict) -> VilaConfig:
    return upstream_vila_config(path, runtime, options.get("template"))

  def converted_config(self, config: dict, options: dict) -> dict:
    return {**config, "template": options["template"]} if options.get("template") else config

  def weights(self, path: str, config: VilaConfig, options: dict) -> JoinedWeights:
    llm = WeightFolder(os.path.join(path, "llm"))
    if options.get("lora"):
      lora = options["lora"]
      leftover = os.path.join(lora, "non_lora_trainables.bin")
      if os.path.isfile(leftover) and os.path.getsize(leftover) > 4096:
        warnings.warn(f"{leftover} ({os.path.getsize(leftover)} bytes) is not applied: only the "
                      "LoRA adapter is merged (LiFT's file holds no trained tensors)")
      llm = lora_lib.LoraMergedWeights(llm, lora_lib.LoraAdapter.read(lora))
    return JoinedWeights(path, {
        "llm": llm,
        "vision": TOWERS[config.vision_type][2].SPEC.tensors(os.path.join(path, "vision_tower")),
        "projector": StripPrefix(WeightFolder(os.path.join(path, "mm_projector")),
                                 PROJECTOR_PREFIX),
    })

  def ignored(self, config: VilaConfig) -> tuple[str, ...]:
    return critic_ignored(config)

  def build(self, config: VilaConfig, path: str | None = None) -> VilaCritic:
    return VilaCritic(config, rngs=nnx.Rngs(0),
                      tokenizer_path=_tokenizer_dir(path) if path else None)

  def export(self, model: VilaCritic, dst: str, **kwargs) -> str:
    raise ValueError("kind 'vila-critic' exports through models.critic.export.export_vila (a "
                     "VILA folder), not a single upstream folder")

  def write_extra(self, model: VilaCritic, folder: str) -> None:
    if model.tokenizer_path and os.path.isdir(model.tokenizer_path):
      files.copy_matching(model.tokenizer_path, TOKENIZER_FILES, os.path.join(folder, TOKENIZER_DIR))


SPEC = VilaSpec(kind="vila-critic", config_class=VilaConfig, model_class=VilaCritic,
                rules=critic_rules, subfolder="", name="the VILA critic",
                parse=VilaConfig.from_dict, dump=VilaConfig.to_dict, options=("lora", "template"))
KIND = SPEC.kind


def vila_config(path: str, *, template: str | None = None, **runtime) -> VilaConfig:
  """The assembled config of a VILA folder or a converted critic, with runtime overrides."""
  return SPEC.config(path, template=template, **runtime)


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
  if lora and store.is_converted(path):
    raise CheckpointError(f"{path}: a converted critic already has its LoRA merged; convert "
                          "again from the VILA folder with --lora to change it")
  return SPEC.load(path, lora=lora, template=template, dtype=dtype, param_dtype=param_dtype,
                   mesh=mesh, remat=remat, attention_impl=attention_impl, progress=progress)


save_critic = SPEC.save  # parameters, config and the tokenizer files, atomically


def load_tokenizer(path: str):
  """The critic's tokenizer: `llm/` of a VILA folder, `tokenizer/` of a converted one; a
  SentencePiece `tokenizer.model` is read with the slow semantics VILA uses (`llama.tokenizer`)."""
  try:
    from transformers import AutoTokenizer  # optional heavy dependency
  except ImportError as err:
    raise ImportError("the critic's tokenizer needs `transformers` (and `sentencepiece` for "
                      "Llama tokenizers)") from err
  for sub in (TOKENIZER_DIR, "llm", ""):
    folder = os.path.join(path, sub) if sub else path
    if os.path.isdir(folder) and glob.glob(os.path.join(folder, "tokenizer*")):
      try:
        # VILA reads a SentencePiece model with the slow tokenizer (use_fast=False, legacy=False).
        if llama_tokenizer.is_sentencepiece_llama(folder):
          return llama_tokenizer.load(folder)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
      except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({err})") from err
  raise CheckpointError(f"{path}: no tokenizer found (looked in {TOKENIZER_DIR}/, llm/ and the "
                        "folder itself)")



"""`export_vila`: a `VilaCritic` -> a VILA-1.5 folder, the layout the released critics ship in.

```
config.json       LlavaLlamaConfig: llm_cfg, vision_tower_cfg, mm_projector_cfg, the mm_* settings
llm/              LlamaForCausalLM (config.json, model*.safetensors) + the tokenizer files
vision_tower/     SiglipVisionModel (keys `vision_model.*`, as transformers 4.x wrote them)
                  + preprocessor_config.json
mm_projector/     config.json (model_type v2l_projector) + model.safetensors (`layers.{1,2,4}.*`)
```

`load_critic` / `Critic.load` read it back, and VILA's own loader expects the same files, so a
fine-tuned or a tiny random critic (the CPU demo's) goes through the real loading path.
"""

from __future__ import annotations

import glob
import os

from lift_jax import files
from lift_jax.checkpoint.safetensors import write_safetensors
from lift_jax.checkpoint.tables import export_tensors
from lift_jax.models.critic.params import PROJECTOR_PREFIX, TOKENIZER_FILES, projector_rules
from lift_jax.models.llama import params as llama_params
from lift_jax.models.siglip import params as siglip_params
from lift_jax.models.siglip.processing import PREPROCESSOR_FILE
PROJECTOR_CONFIG = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector"}


def top_config(cfg) -> dict:
  """VILA's top-level `config.json` for a `VilaConfig` (the keys `vila_config` reads, plus the
  sub-configs VILA's `LlavaLlamaModel` itself builds from)."""
  if cfg.vision_type != "siglip":
    raise NotImplementedError(f"export of a {cfg.vision_type!r} vision tower is not supported")
  return {
      "architectures": ["LlavaLlamaModel"],
      "model_type": "llava_llama",
      "llm_cfg": {"_name_or_path": "./llm", **cfg.llm.to_hf_config()},
      "vision_tower_cfg": {"_name_or_path": "./vision_tower", **cfg.vision.to_hf_config()},
      "mm_projector_cfg": {"_name_or_path": "./mm_projector",
                           "mm_projector_type": cfg.projector_type, **PROJECTOR_CONFIG},
      "hidden_size": cfg.llm.hidden_size,
      "mm_hidden_size": cfg.vision.hidden_size,
      "mm_vision_select_layer": cfg.select_layer,
      "mm_vision_select_feature": cfg.select_feature,
      "image_aspect_ratio": "resize",
      "num_video_frames": cfg.num_video_frames,
      "mm_use_im_start_end": False,
      "mm_use_im_patch_token": False,
      "s2": False,
  }


def export_vila(critic_model, dst: str, tokenizer_dir: str | None = None, *,
                max_shard_bytes: int = 5 * 1024**3, overwrite: bool = False) -> str:
  """Writes `critic_model` (a `VilaCritic`) as a VILA-1.5 folder at `dst`; returns `dst`.

  `tokenizer_dir` (default: the folder the model was loaded from) holds the LLM's tokenizer files,
  copied into `llm/`. The folder is written under a temporary name and renamed at the end. The
  template is not stored by VILA: `load_critic` infers it from the folder name or the vocabulary
  (vicuna_v1 unless the vocabulary is Yi's 64000), or takes `template=`.
  """
  cfg = critic_model.config
  tokenizer_dir = tokenizer_dir or critic_model.tokenizer_path
  if not tokenizer_dir or not glob.glob(os.path.join(tokenizer_dir, "tokenizer*")):
    raise FileNotFoundError(f"{tokenizer_dir!r}: no tokenizer files (tokenizer*) to put in llm/; "
                            "pass tokenizer_dir=")
  with files.atomic_directory(dst, overwrite=overwrite) as tmp:
    files.write_json(os.path.join(tmp, "config.json"), top_config(cfg))
    llm = llama_params.export(critic_model.llm, os.path.join(tmp, "llm"),
                              max_shard_bytes=max_shard_bytes)
    files.copy_matching(tokenizer_dir, TOKENIZER_FILES, llm)
    tower = siglip_params.export(critic_model.vision, os.path.join(tmp, "vision_tower"),
                                 max_shard_bytes=max_shard_bytes)
    files.write_json(os.path.join(tower, PREPROCESSOR_FILE), cfg.image.to_config())
    projector = os.path.join(tmp, "mm_projector")
    os.makedirs(projector)
    files.write_json(os.path.join(projector, "config.json"),
                     {**PROJECTOR_CONFIG, "mm_projector_type": cfg.projector_type})
    write_safetensors(os.path.join(projector, "model.safetensors"),
                      {PROJECTOR_PREFIX + k: v
                       for k, v in export_tensors(critic_model.projector, projector_rules())})
  return os.path.abspath(dst)

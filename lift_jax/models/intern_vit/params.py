"""InternViT keys -> `InternVisionModel`, image preprocessing defaults, and `load` / `save`.

The table is written in the original (trust_remote_code) `InternVisionModel` naming, the one VILA
saves in `vision_tower/`:
  embeddings.{class_embedding, position_embedding, patch_embedding.{weight,bias}}
  encoder.layers.{i}.{norm1,norm2}.weight(+bias), ls1, ls2
  encoder.layers.{i}.attn.{qkv.weight(+bias), q_norm.weight, k_norm.weight, proj.{weight,bias}}
  encoder.layers.{i}.mlp.{fc1,fc2}.{weight,bias}
A `vision_model.` prefix (InternVL chat checkpoints) is stripped. transformers' `InternVLVisionModel`
folders (`encoder.layer.{i}.attention.{q,k,v}_proj`, `lambda_1`, ...) are read through
`TransformersNaming`, which shows them under the original names (q, k, v concatenated into qkv).
`load` also takes a VILA root (it finds `vision_tower/`) or a converted checkpoint ("intern-vit").
"""

from __future__ import annotations

import os
import re

import numpy as np
from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule, heads_out, identity, linear
from lift_jax.checkpoint.views import StripPrefix
from lift_jax.files import read_json
from lift_jax.models.intern_vit.modeling import InternVisionConfig, InternVisionModel
from lift_jax.models.siglip.processing import PREPROCESSOR_FILE, ImageProcessor
PREFIX = "vision_model."
# Keys a tower folder may hold that the port does not use (transformers' MIM mask token).
IGNORED = ("embeddings.mask_token",)
# VILA's `InternVisionPreprocessor`: bicubic resize to 448, ToTensor, ImageNet normalization.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vision_rules(cfg: InternVisionConfig) -> list[Rule]:
  """One row per (prefix-free) original key; `{i}` rows fill the stacked layers. Every row can
  be inverted (`tables.export_tensors` gives the original state dict back)."""
  d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  blk, dst = "encoder.layers.{i}", "blocks.layers"
  p1 = cfg.num_patches + 1
  rules = [
      Rule("embeddings.class_embedding", "class_embedding", lambda w: w.reshape(d),
           lambda k: k.reshape(1, 1, d)),
      Rule("embeddings.position_embedding", "position_embedding", lambda w: w.reshape(p1, d),
           lambda k: k.reshape(1, p1, d)),
      Rule("embeddings.patch_embedding.weight", "patch_embedding.kernel",
           lambda w: w.transpose(1, 2, 3, 0),  # Conv2d [D, C, p, p] -> [C, p, p, D]
           lambda k: k.transpose(3, 0, 1, 2)),
      Rule("embeddings.patch_embedding.bias", "patch_embedding.bias"),
      # [3·N·H, D] (q rows, then k, then v) -> [D, 3, N, H]
      Rule(f"{blk}.attn.qkv.weight", f"{dst}.attn.qkv.kernel", lambda w: w.T.reshape(d, 3, n, h),
           lambda k: k.reshape(d, 3 * n * h).T),
      Rule(f"{blk}.attn.proj.weight", f"{dst}.attn.o.kernel", *heads_out(n, h, d)),
      Rule(f"{blk}.attn.proj.bias", f"{dst}.attn.o.bias", identity),
      Rule(f"{blk}.ls1", f"{dst}.ls1"),
      Rule(f"{blk}.ls2", f"{dst}.ls2"),
  ]
  if cfg.qkv_bias:
    rules.append(Rule(f"{blk}.attn.qkv.bias", f"{dst}.attn.qkv.bias", lambda b: b.reshape(3, n, h),
                      lambda b: b.reshape(-1)))
  if cfg.qk_normalization:
    rules += [Rule(f"{blk}.attn.{q}_norm.weight", f"{dst}.attn.{q}_norm.scale") for q in "qk"]
  for norm in ("norm1", "norm2"):
    rules.append(Rule(f"{blk}.{norm}.weight", f"{dst}.{norm}.scale"))
    if cfg.norm_type == "layer_norm":
      rules.append(Rule(f"{blk}.{norm}.bias", f"{dst}.{norm}.bias"))
  for fc, ours in (("fc1", "up"), ("fc2", "down")):
    rules += [Rule(f"{blk}.mlp.{fc}.weight", f"{dst}.mlp.{ours}.kernel", linear),
              Rule(f"{blk}.mlp.{fc}.bias", f"{dst}.mlp.{ours}.bias")]
  return rules


# transformers InternVL key (regex) -> original key.
_HF_RENAMES = [
    (r"embeddings\.cls_token$", "embeddings.class_embedding"),
    (r"embeddings\.position_embeddings$", "embeddings.position_embedding"),
    (r"embeddings\.patch_embeddings\.projection\.", "embeddings.patch_embedding."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.norm2."),
    (r"encoder\.layer\.(\d+)\.lambda_1$", r"encoder.layers.\1.ls1"),
    (r"encoder\.layer\.(\d+)\.lambda_2$", r"encoder.layers.\1.ls2"),
    (r"encoder\.layer\.(\d+)\.attention\.projection_layer\.", r"encoder.layers.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.attention\.([qk])_norm\.", r"encoder.layers.\1.attn.\2_norm."),
    (r"encoder\.layer\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


class TransformersNaming:
  """A transformers `InternVLVisionModel` folder seen under the original key names."""

  def __init__(self, folder):
    self.folder = folder.folder
    self._inner = folder
    self._map: dict[str, str | tuple[str, str, str]] = {}
    qkv: dict[str, dict[str, str]] = {}
    for key in folder.keys():
      m = _HF_QKV.match(key)
      if m:
        qkv.setdefault(f"encoder.layers.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = key
        continue
      for pattern, repl in _HF_RENAMES:
        new, hits = re.subn(pattern, repl, key)
        if hits:
          self._map[new] = key
          break
      else:
        self._map[key] = key  # unknown: left as is, so the table check names it
    for name, parts in qkv.items():
      if set(parts) != set("qkv"):
        raise CheckpointError(f"{self.folder}: {name} needs q_proj, k_proj and v_proj; found "
                              f"only {sorted(parts)}")
      self._map[name] = (parts["q"], parts["k"], parts["v"])

  @staticmethod
  def applies(keys) -> bool:
    return any(k.startswith(("encoder.layer.", "embeddings.cls_token")) for k in keys)

  def keys(self) -> list[str]:
    return list(self._map)

  def __contains__(self, key: str) -> bool:
    return key in self._map

  def shape(self, key: str):
    src = self._map[key]
    if isinstance(src, tuple):
      shapes = [self._inner.shape(k) for k in src]
      return (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
    return self._inner.shape(src)

  def read(self, key: str):
    src = self._map[key]
    if isinstance(src, tuple):
      return np.concatenate([self._inner.read(k) for k in src], axis=0)
    return self._inner.read(src)


def weights(folder: str):
  """The tower's tensors under the original names, whichever spelling the folder uses."""
  view = StripPrefix(WeightFolder(folder), PREFIX)
  return TransformersNaming(view) if TransformersNaming.applies(view.keys()) else view


def image_processor(folder: str, image_size: int | None = None) -> ImageProcessor:
  """VILA's InternViT preprocessing: `folder/preprocessor_config.json` over ImageNet defaults.

  VILA saves its `InternVisionPreprocessor` with no mean/std in the file, so a missing value must
  fall back to ImageNet's (not SigLIP's 0.5).
  """
  config = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
  path = os.path.join(folder, PREPROCESSOR_FILE)
  if os.path.isfile(path):
    config.update(read_json(path, "a preprocessor config"))
  return ImageProcessor.from_config(config, image_size=image_size or 448)


SPEC = ModelSpec(
    kind="intern-vit", config_class=InternVisionConfig, model_class=InternVisionModel,
    rules=vision_rules, subfolder="vision_tower", name="the InternViT tower",
    parse=InternVisionConfig.from_hf_config, dump=InternVisionConfig.to_hf_config,
    ignore=IGNORED, tensors=weights, vila_root=True)
KIND = SPEC.kind

load = SPEC.load  # (path, *, dtype, param_dtype, mesh, remat, attention_impl, progress)
save = SPEC.save  # a converted checkpoint that `load` reads back
export = SPEC.export  # the original (trust_remote_code) layout
vision_config = SPEC.config

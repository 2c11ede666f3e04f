"""VILA-1.5, the LiFT-Critic's base model, as an NNX module: frames -> vision tower ->
mlp_downsample projector -> spliced into the LLM's prompt embeddings -> Llama.

Two towers, chosen by `vision_tower/config.json`: SigLIP-so400m (VILA1.5-3b/13b: 27x27 tokens, no
CLS, `cls_patch` at layer -2, vicuna_v1) and InternViT-6B-448px-V1-2 (VILA1.5-40b: CLS + 32x32,
`patch` at layer -1 so the CLS is dropped, 2x2 merge to 256 tokens of 4·3200, Yi-34B with GQA,
hermes-2). Both feed the same `mlp_downsample` projector.

`VilaCritic` (pure arrays in, arrays out, jit- and mesh-friendly):
  encode_frames(pixel_values [V,F,3,H,W]) -> [V,F,P',D]   tower `hidden_states[select_layer]`
      (`cls_patch`: all tokens; `patch`: CLS dropped) -> 2x2 merge (zero-padded to an even side)
      -> LayerNorm -> Linear -> GELU -> Linear; each frame on its own, no temporal pooling.
  embed_inputs(pixel_values, token_ids [B,S], image_slots [B,S]) -> [B,S,D]   text embeddings with
      the image tokens written in: `image_slots[b,s] = (v·F + f)·P' + j` takes token j of frame f of
      video v, -1 keeps the text token. Static shapes: the slots are laid out on the host.
  __call__(pixel_values, token_ids, image_slots, attention_mask, last_only=False) -> logits fp32.
      Prompts are left-padded; RoPE positions come from the mask, so a padded row scores as alone.

Loading is in `params.py`, the host-side `Critic` (tokenizer, prompts, generation) in `critic.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lift_jax import layers
from lift_jax.models import intern_vit as intern_lib
from lift_jax.models import llama as llama_lib
from lift_jax.models import siglip as siglip_lib
from lift_jax.models.critic import prompts
from lift_jax.parallel.mesh import constrain

_TOKENS = ("activation_batch", "activation_length", "activation_embed")
# vision_type -> (config class, tower module class, params module).
TOWERS = {
    "siglip": (siglip_lib.SiglipVisionConfig, siglip_lib.SiglipVisionModel, siglip_lib.params),
    "intern_vit": (intern_lib.InternVisionConfig, intern_lib.InternVisionModel, intern_lib.params),
}
VisionConfig = siglip_lib.SiglipVisionConfig | intern_lib.InternVisionConfig


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
    if self.vision_type not in TOWERS:
      raise ValueError(f"vision_type={self.vision_type!r}; expected one of {sorted(TOWERS)}")
    if not isinstance(self.vision, TOWERS[self.vision_type][0]):
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
              vision=vision_config(d.get("vision_type", "siglip"), d["vision"], runtime),
              image=siglip_lib.ImageProcessor.from_config(d.get("image", {})),
              **{k: d[k] for k in ("vision_type", "projector_type", "select_layer",
                                   "select_feature", "num_video_frames", "template") if k in d})
    cfg.validate()
    return cfg


def vision_config(vision_type: str, config: dict, runtime: dict) -> VisionConfig:
  if vision_type not in TOWERS:
    raise ValueError(f"vision tower {vision_type!r}; expected one of {sorted(TOWERS)}")
  return TOWERS[vision_type][0].from_hf_config(config, **runtime)


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
    self.vision = TOWERS[cfg.vision_type][1](cfg.vision, rngs=rngs)
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

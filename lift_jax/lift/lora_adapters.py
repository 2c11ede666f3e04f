"""Trainable LoRA on the critic's LLM: y = x·W + (α/r)·dropout(x)·A·B, W frozen (PEFT's LoRA).

`add_lora(model, cfg)` swaps every targeted `layers.Dense` of the stacked decoder layers
(`llm.layers.layers.{attn.q,k,v,o, mlp.gate,up,down}`, every linear of the LLM but `lm_head`, as
LiFT's `find_all_linear_names`) for the shared `layers.LoraDense` (stacked factors that ride the
existing `lax.scan` over layers; PEFT's init; dropout p = `cfg.dropout` inside `dropout_key(key)`).

Out: `peft_state_dict` / `export_peft` write PEFT's layout (`adapter_config.json` +
`adapter_model.safetensors`, A `[r, in]`, B `[out, r]`), keys under `base_model.model.llm.` (VILA,
what LiFT ships and `models.critic.load_critic(..., lora=)` reads) or `base_model.model.` (a bare
`LlamaForCausalLM`); `merge_lora` folds W + (α/r)·A·B back into plain Dense layers (a critic
`save_critic` can write).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from lift_jax import files, layers
from lift_jax.parallel import distributed
from lift_jax.checkpoint.safetensors import write_safetensors
from lift_jax.layers.lora import LoraDense, LoraParam, dropout_key, merge  # noqa: F401

# PEFT module name -> (parent in our DecoderLayer, attribute) and its torch parent module.
TARGETS: dict[str, tuple[str, str, str]] = {
    "q_proj": ("attn", "q", "self_attn"), "k_proj": ("attn", "k", "self_attn"),
    "v_proj": ("attn", "v", "self_attn"), "o_proj": ("attn", "o", "self_attn"),
    "gate_proj": ("mlp", "gate", "mlp"), "up_proj": ("mlp", "up", "mlp"),
    "down_proj": ("mlp", "down", "mlp"),
}
LAYOUTS = {"vila": "base_model.model.llm.", "llm": "base_model.model."}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """LiFT's settings: 13B r 128 / α 256, 40B r 64 / α 128; dropout 0.05; every LLM linear."""

  r: int = 128
  alpha: float = 256.0
  dropout: float = 0.05
  targets: tuple[str, ...] = tuple(TARGETS)

  def __post_init__(self):
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown or not self.targets:
      raise ValueError(f"LoRA targets {list(self.targets)}: expected a non-empty subset of "
                       f"{list(TARGETS)}")
    if self.r < 1 or not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA r={self.r} must be >= 1 and dropout={self.dropout} in [0, 1)")

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.r

  @classmethod
  def critic_13b(cls, **kw) -> "LoraConfig":
    return cls(**{**dict(r=128, alpha=256.0), **kw})

  @classmethod
  def critic_40b(cls, **kw) -> "LoraConfig":
    return cls(**{**dict(r=64, alpha=128.0), **kw})

  @classmethod
  def from_config(cls, c: Any) -> "LoraConfig":
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    if "targets" in d:
      d["targets"] = tuple(d["targets"])
    return cls(**d)


def _decoder(model) -> nnx.Module:
  """The stacked decoder layers of a VilaCritic (`.llm`) or a bare LlamaForCausalLM."""
  llm = getattr(model, "llm", model)
  return llm.layers.layers


def _num_layers(model) -> int:
  return getattr(model, "llm", model).config.num_hidden_layers


def add_lora(model, cfg: LoraConfig, *, seed: int = 0):
  """Wraps the targeted Dense layers in place with LoRA factors; returns the model."""
  dec = _decoder(model)
  n = _num_layers(model)
  key = jax.random.key(seed)
  for i, name in enumerate(cfg.targets):
    parent_name, attr, _ = TARGETS[name]
    parent = getattr(dec, parent_name)
    base = getattr(parent, attr, None)
    if isinstance(base, LoraDense):
      raise ValueError(f"{name} already has LoRA")
    if not isinstance(base, layers.Dense):
      raise ValueError(f"the LLM has no {name} linear ({parent_name}.{attr} is {type(base)})")
    setattr(parent, attr, LoraDense(base, r=cfg.r, scale=cfg.scale, dropout=cfg.dropout,
                                    salt=zlib.crc32(name.encode()) & 0x7FFFFFFF,
                                    key=jax.random.fold_in(key, i), num_layers=n))
  return model


def lora_modules(model) -> dict[str, LoraDense]:
  """PEFT target name -> its LoraDense (stacked over layers)."""
  dec = _decoder(model)
  out = {}
  for name, (parent_name, attr, _) in TARGETS.items():
    mod = getattr(getattr(dec, parent_name), attr, None)
    if isinstance(mod, LoraDense):
      out[name] = mod
  return out


def lora_config_of(model, dropout: float = 0.0) -> LoraConfig:
  """The LoraConfig a wrapped model was built with."""
  mods = lora_modules(model)
  if not mods:
    raise ValueError("the model has no LoRA layers (call add_lora first)")
  m = next(iter(mods.values()))
  return LoraConfig(r=m.r, alpha=m.scale * m.r, dropout=m.dropout, targets=tuple(mods))


def trainable_filter():
  return LoraParam


# ----------------------------------------------------------------------------- export


def peft_state_dict(model, *, layout: str = "vila") -> dict[str, np.ndarray]:
  """`{PEFT key: float32 array}`: `<prefix>model.layers.{i}.<parent>.<name>.lora_{A,B}.weight`,
  A `[r, in]` and B `[out, r]` with the torch weight's flattening of heads."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: expected one of {sorted(LAYOUTS)}")
  prefix = LAYOUTS[layout]
  out = {}
  for name, mod in lora_modules(model).items():
    torch_parent = TARGETS[name][2]
    a = distributed.host_array(mod.lora_a[...]).astype(np.float32)  # [L, in..., r]
    b = distributed.host_array(mod.lora_b[...]).astype(np.float32)  # [L, r, out...]
    n_layers, r = a.shape[0], a.shape[-1]
    a = a.reshape(n_layers, -1, r).transpose(0, 2, 1)  # [L, r, in]
    b = b.reshape(n_layers, r, -1).transpose(0, 2, 1)  # [L, out, r]
    for i in range(n_layers):
      stem = f"{prefix}model.layers.{i}.{torch_parent}.{name}"
      out[f"{stem}.lora_A.weight"] = np.ascontiguousarray(a[i])
      out[f"{stem}.lora_B.weight"] = np.ascontiguousarray(b[i])
  return out


def peft_config(model, *, layout: str = "vila", base_model: str | None = None,
                dropout: float | None = None) -> dict[str, Any]:
  """`adapter_config.json` for PEFT's `LoraConfig` (target modules by full name, as VILA's
  `find_all_linear_names` lists them)."""
  cfg = lora_config_of(model)
  n = _num_layers(model)
  stem = "llm.model.layers" if layout == "vila" else "model.layers"
  targets = [f"{stem}.{i}.{TARGETS[t][2]}.{t}" for i in range(n) for t in cfg.targets]
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
          "r": cfg.r, "lora_alpha": cfg.alpha,
          "lora_dropout": cfg.dropout if dropout is None else dropout, "bias": "none",
          "target_modules": targets, "fan_in_fan_out": False, "inference_mode": True,
          "init_lora_weights": True, "use_rslora": False, "use_dora": False,
          "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
          "alpha_pattern": {}}


def export_peft(model, out_dir: str, *, layout: str = "vila", base_model: str | None = None,
                dtype: str = "float32", overwrite: bool = False) -> str:
  """Writes the adapter in PEFT's file layout, atomically (temporary folder, then rename)."""
  tensors = peft_state_dict(model, layout=layout)
  if dtype != "float32":
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
  with files.atomic_directory(out_dir, overwrite=overwrite) as tmp:
    write_safetensors(os.path.join(tmp, "adapter_model.safetensors"), tensors)
    files.write_json(os.path.join(tmp, "adapter_config.json"),
                     peft_config(model, layout=layout, base_model=base_model))
  return os.path.abspath(out_dir)


def merge_lora(model):
  """Folds every LoraDense into its Dense (W + (α/r)·A·B, in the kernel's dtype), in place."""
  dec = _decoder(model)
  for name, mod in lora_modules(model).items():
    parent_name, attr, _ = TARGETS[name]
    setattr(getattr(dec, parent_name), attr, merge(mod))
  return model


def lora_param_count(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, LoraParam)))


def set_lora_params(model, params: Any) -> Any:
  """Puts a pure dict of LoRA factors (a train state's "params") into the model, in place."""
  state = nnx.state(model, LoraParam)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model

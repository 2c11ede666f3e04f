"""Trainable LoRA on the critic's LLM: y = x·W + (α/r)·dropout(x)·A·B, W frozen (PEFT's LoRA).

Design: `add_lora(model, cfg)` swaps every targeted `layers.Dense` of the stacked decoder layers
(`llm.layers.layers.{attn.q,k,v,o, mlp.gate,up,down}`, every linear of the LLM but `lm_head`, as
LiFT's `find_all_linear_names`) for a `LoraDense` that keeps the frozen Dense and adds stacked
factors A `[L, in..., r]` and B `[L, r, out...]` (`LoraParam`, the only trainable variables). The
update runs on activations, not on W: x·A is r columns wide, so no full-size weight or weight
gradient is ever formed, and the stacked factors ride the existing `lax.scan` over layers. A and B
carry the base kernel's logical axis names (in-axes on A, out-axes on B, rank unsharded), so
they shard with the same mesh rules as the weights they adapt.

Init as PEFT: A ~ U(-1/√fan_in, 1/√fan_in) (kaiming_uniform with a=√5), B = 0, so training starts
from the base model. Dropout (p = `cfg.dropout`, on the LoRA input only, per target and layer) is
on inside `dropout_key(key)` and off otherwise (evaluation, export).

Out: `peft_state_dict` / `export_peft` write PEFT's layout (`adapter_config.json` +
`adapter_model.safetensors`, A `[r, in]`, B `[out, r]`), keys under `base_model.model.llm.` (VILA,
what LiFT ships and `models.critic.load_critic(..., lora=)` reads) or `base_model.model.` (a bare
`LlamaForCausalLM`); `merge_lora` folds W + (α/r)·A·B back into plain Dense layers (a critic
`save_critic` can write).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import shutil
import tempfile
import zlib
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax import layers

# PEFT module name -> (parent in our DecoderLayer, attribute) and its torch parent module.
TARGETS: dict[str, tuple[str, str, str]] = {
    "q_proj": ("attn", "q", "self_attn"), "k_proj": ("attn", "k", "self_attn"),
    "v_proj": ("attn", "v", "self_attn"), "o_proj": ("attn", "o", "self_attn"),
    "gate_proj": ("mlp", "gate", "mlp"), "up_proj": ("mlp", "up", "mlp"),
    "down_proj": ("mlp", "down", "mlp"),
}
LAYOUTS = {"vila": "base_model.model.llm.", "llm": "base_model.model."}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "lift_jax_lora_dropout_key", default=None)


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


class LoraParam(nnx.Param):
  """A LoRA factor: the trainable variables (the filter `nnx.split(model, LoraParam, ...)`)."""


class LoraIndex(nnx.Variable):
  """Each stacked layer's index (fixed), so dropout masks differ from layer to layer."""


@contextlib.contextmanager
def dropout_key(key: jax.Array | None) -> Iterator[None]:
  """Turns LoRA dropout on for the calls traced inside (None: off)."""
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


class LoraDense(nnx.Module):
  """A frozen `layers.Dense` plus (α/r)·dropout(x)·A·B (around a stacked or a single Dense)."""

  def __init__(self, base: layers.Dense, *, r: int, scale: float, dropout: float, salt: int,
               key: jax.Array, num_layers: int | None = None):
    self.base = base
    self.r, self.scale, self.dropout, self.salt = r, float(scale), float(dropout), int(salt)
    axes = tuple(base.kernel.get_metadata().get("out_sharding")
                 or (None,) * base.kernel[...].ndim)
    lead = () if num_layers is None else (num_layers,)
    n_in, n_out = len(base.in_shape), len(base.out_shape)
    if len(axes) != len(lead) + n_in + n_out:
      raise ValueError(f"kernel axes {axes} do not match in {base.in_shape} / out {base.out_shape}")
    lead_axes, in_axes, out_axes = axes[:len(lead)], axes[len(lead):len(lead) + n_in], axes[-n_out:]
    fan_in = math.prod(base.in_shape)
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(key, lead + base.in_shape + (r,), jnp.float32, -bound, bound)
    self.lora_a = LoraParam(a, out_sharding=lead_axes + in_axes + (None,), eager_sharding=False)
    self.lora_b = LoraParam(jnp.zeros(lead + (r,) + base.out_shape, jnp.float32),
                            out_sharding=lead_axes + (None,) + out_axes, eager_sharding=False)
    self.layer_index = LoraIndex(jnp.arange(num_layers, dtype=jnp.int32) if num_layers else
                                 jnp.zeros((), jnp.int32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    dtype = self.base.dtype
    h = x.astype(dtype)
    key = _DROPOUT_KEY.get()
    if key is not None and self.dropout > 0:
      k = jax.random.fold_in(jax.random.fold_in(key, self.layer_index[...]), self.salt)
      keep = jax.random.bernoulli(k, 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(dtype)
    n_in, n_out = len(self.base.in_shape), len(self.base.out_shape)
    contract = _LETTERS[h.ndim - n_in:h.ndim]
    out = _LETTERS[h.ndim:h.ndim + n_out]
    with jax.named_scope("lora"):
      hr = jnp.einsum(f"...{contract},{contract}z->...z", h, self.lora_a[...].astype(dtype))
      d = jnp.einsum(f"...z,z{out}->...{out}", hr, self.lora_b[...].astype(dtype))
    return y + (self.scale * d).astype(y.dtype)


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
    a = np.asarray(jax.device_get(mod.lora_a[...]), np.float32)  # [L, in..., r]
    b = np.asarray(jax.device_get(mod.lora_b[...]), np.float32)  # [L, r, out...]
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
  from lift_jax.checkpoint.safetensors import write_safetensors

  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    tensors = peft_state_dict(model, layout=layout)
    if dtype != "float32":
      import ml_dtypes
      np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
      tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
    write_safetensors(os.path.join(tmp, "adapter_model.safetensors"), tensors)
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
      json.dump(peft_config(model, layout=layout, base_model=base_model), f, indent=2)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def merge_lora(model):
  """Folds every LoraDense into its Dense (W + (α/r)·A·B, in the kernel's dtype), in place."""
  dec = _decoder(model)
  for name, mod in lora_modules(model).items():
    parent_name, attr, _ = TARGETS[name]
    base = mod.base
    n_in = len(base.in_shape)
    a, b = mod.lora_a[...], mod.lora_b[...]
    lead = a.shape[:a.ndim - n_in - 1]
    a2 = a.reshape(lead + (-1, mod.r)).astype(jnp.float32)
    b2 = b.reshape(lead + (mod.r, -1)).astype(jnp.float32)
    delta = jnp.einsum("...ir,...ro->...io", a2, b2) * mod.scale
    w = base.kernel[...]
    base.kernel[...] = (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)
    setattr(getattr(dec, parent_name), attr, base)
  return model


def lora_param_count(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, LoraParam)))


def set_lora_params(model, params: Any) -> Any:
  """Puts a pure dict of LoRA factors (a train state's "params") into the model, in place."""
  state = nnx.state(model, LoraParam)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model

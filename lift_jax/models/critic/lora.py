"""PEFT LoRA adapters merged into the base weights at load time: W' = W + (alpha / r) · B · A.

LiFT-Critic ships as a PEFT adapter over VILA's LLM (every linear of the decoder but `lm_head`,
r = 128, alpha = 256 for 13B; r = 64, alpha = 128 for 40B) and runs with `merge_and_unload()`, so
merging once while the weights stream in gives the same model at no runtime cost.

`LoraAdapter.read(folder)` parses `adapter_config.json` and `adapter_model.safetensors` (or a `.bin`,
read with `torch.load(weights_only=True)` when PyTorch is installed). Adapter keys are matched to
base keys by stripping PEFT's `base_model.model.` and VILA's `llm.`:
`base_model.model.llm.model.layers.3.self_attn.q_proj.lora_A.weight` -> `model.layers.3.self_attn.q_proj.weight`.
`LoraMergedWeights` wraps a `WeightFolder` so the parameter table reads merged tensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np

from lift_jax.checkpoint.safetensors import CheckpointError, SafetensorsFile

CONFIG_FILE = "adapter_config.json"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
# Module prefixes of the adapted model that lead to the LLM (PEFT wrapper, then VILA's `llm.`).
_PREFIXES = ("base_model.model.", "base_model.")
_LLM_PREFIX = "llm."


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
  """A PEFT LoRA adapter: per base weight key, its A `[r, in]`, B `[out, r]` and scale."""

  folder: str
  config: dict
  # base weight key (e.g. "model.layers.0.self_attn.q_proj.weight") -> (A key, B key)
  pairs: dict
  tensors: "AdapterTensors"  # adapter key -> array, read on demand

  @classmethod
  def read(cls, folder: str) -> "LoraAdapter":
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
      raise CheckpointError(f"{path}: missing (expected a PEFT LoRA adapter folder)")
    try:
      with open(path) as f:
        config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
      raise CheckpointError(f"{path}: unreadable adapter config ({err})") from err
    _check_config(path, config)
    tensors = _read_tensors(folder)
    pairs: dict[str, dict[str, str]] = {}
    for key in tensors:
      m = _KEY.match(key)
      if m is None:
        raise CheckpointError(f"{folder}: adapter tensor {key!r} is not a LoRA A/B weight (only "
                              "plain LoRA on linear layers is supported; modules_to_save, biases "
                              "and embedding adapters are not)")
      module = m["module"]
      for prefix in _PREFIXES:
        if module.startswith(prefix):
          module = module[len(prefix):]
          break
      if module.startswith(_LLM_PREFIX):
        module = module[len(_LLM_PREFIX):]
      elif module.startswith(("vision_tower.", "mm_projector.")):
        raise CheckpointError(f"{folder}: adapter tensor {key!r} adapts {module.split('.')[0]}; "
                              "only adapters on the LLM are supported (LiFT uses --lora_llm only)")
      pairs.setdefault(module + ".weight", {})[m["which"]] = key
    for base, ab in pairs.items():
      if set(ab) != {"A", "B"}:
        raise CheckpointError(f"{folder}: {base} has lora_{''.join(ab)} but not its partner")
      a, b = tensors.shape(ab["A"]), tensors.shape(ab["B"])
      if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise CheckpointError(f"{folder}: {base}: lora_A {a} and lora_B {b} do not form B·A")
    if not pairs:
      raise CheckpointError(f"{folder}: the adapter holds no LoRA weights")
    return cls(folder=folder, config=config,
               pairs={k: (v["A"], v["B"]) for k, v in pairs.items()}, tensors=tensors)

  def scale(self, base_key: str) -> float:
    """alpha / r (or alpha / sqrt(r) with rsLoRA), honouring PEFT's per-module patterns."""
    module = base_key[: -len(".weight")]
    r = self.tensors.shape(self.pairs[base_key][0])[0]
    alpha = self.config.get("lora_alpha", 8)
    for pattern, value in (self.config.get("alpha_pattern") or {}).items():
      if re.fullmatch(rf"(.*\.)?{pattern}", module):
        alpha = value
    return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

  def delta(self, base_key: str) -> np.ndarray:
    """(alpha / r) · B · A in float32, shaped like the torch weight `[out, in]`."""
    a_key, b_key = self.pairs[base_key]
    a = np.asarray(self.tensors[a_key], np.float32)
    b = np.asarray(self.tensors[b_key], np.float32)
    return (b @ a) * np.float32(self.scale(base_key))


def _check_config(path: str, config: dict) -> None:
  peft_type = config.get("peft_type", "LORA")
  if str(peft_type).upper() != "LORA":
    raise CheckpointError(f"{path}: peft_type={peft_type!r}; only LORA adapters are supported")
  for field, ok in (("use_dora", False), ("fan_in_fan_out", False)):
    if config.get(field, ok) != ok:
      raise CheckpointError(f"{path}: {field}={config[field]!r} is not supported")
  if config.get("bias", "none") != "none":
    raise CheckpointError(f"{path}: bias={config['bias']!r}: adapters that train biases are not "
                          "supported (LiFT uses bias='none')")
  if config.get("modules_to_save"):
    raise CheckpointError(f"{path}: modules_to_save={config['modules_to_save']} is not supported")


class AdapterTensors:
  """Adapter tensors by key: read lazily from safetensors, or held from a `.bin`."""

  def __init__(self, file: SafetensorsFile | None = None, arrays: dict | None = None):
    self._file, self._arrays = file, arrays

  def keys(self) -> list[str]:
    return list(self._file.keys() if self._file is not None else self._arrays)

  def __iter__(self):
    return iter(self.keys())

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._file.shape(key) if self._file is not None else self._arrays[key].shape)

  def __getitem__(self, key: str) -> np.ndarray:
    return self._file.read(key) if self._file is not None else self._arrays[key]


def _read_tensors(folder: str) -> AdapterTensors:
  st = os.path.join(folder, "adapter_model.safetensors")
  if os.path.isfile(st):
    return AdapterTensors(file=SafetensorsFile(st))
  binary = os.path.join(folder, "adapter_model.bin")
  if os.path.isfile(binary):
    try:
      import torch
    except ImportError as err:
      raise CheckpointError(f"{binary}: a pickled adapter needs PyTorch to read (weights_only); "
                            "or convert it to adapter_model.safetensors") from err
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return AdapterTensors(arrays={k: v.float().numpy() for k, v in state.items()})
  raise CheckpointError(f"{folder}: no adapter_model.safetensors (or .bin) found")


class LoraMergedWeights:
  """A `WeightFolder` whose adapted weights read as W + (alpha / r) · B · A.

  Every adapter pair must name a weight of the folder; `merged_keys` lists those merged.
  """

  def __init__(self, folder, adapter: LoraAdapter):
    self.folder = folder.folder
    self._inner = folder
    self.adapter = adapter
    unknown = sorted(k for k in adapter.pairs if k not in folder)
    if unknown:
      raise CheckpointError(f"{adapter.folder}: adapter targets weights the base model at "
                            f"{self.folder} does not have: {unknown[:5]}"
                            + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    for key in adapter.pairs:
      want = tuple(folder.shape(key))
      a_key, b_key = adapter.pairs[key]
      got = (adapter.tensors.shape(b_key)[0], adapter.tensors.shape(a_key)[1])
      if got != want:
        raise CheckpointError(f"{adapter.folder}: LoRA for {key} makes a {got} update, the weight "
                              f"is {want}")
    self.merged_keys = sorted(adapter.pairs)

  def keys(self) -> list[str]:
    return list(self._inner.keys())

  def __contains__(self, key: str) -> bool:
    return key in self._inner

  def shape(self, key: str):
    return self._inner.shape(key)

  def read(self, key: str) -> np.ndarray:
    w = self._inner.read(key)
    if key not in self.adapter.pairs:
      return w
    return (np.asarray(w, np.float32) + self.adapter.delta(key)).astype(np.float32)

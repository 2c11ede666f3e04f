"""Helpers for parity tests against the PyTorch references (torch is a test-only dependency)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from lift_jax.checkpoint.safetensors import write_safetensors


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
  """Moves every parameter and persistent buffer away from its init (ones, zeros) so no layer hides."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(module.state_dict(keep_vars=True).items()):
      if p.dtype.is_floating_point:
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return module


def rel_err(ours, ref) -> float:
  """max |ours - ref| / max |ref|."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def save_sharded(module: torch.nn.Module, folder: str, config: dict, *, shards: int = 1,
                 weights_name: str = "diffusion_pytorch_model") -> str:
  """Writes module's state dict like `save_pretrained`: config.json + shards + index."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  state = {k: v.detach().cpu().contiguous().numpy() for k, v in module.state_dict().items()}
  keys = list(state)
  if shards == 1:
    write_safetensors(os.path.join(folder, f"{weights_name}.safetensors"), state)
    return folder
  weight_map = {}
  for s, part in enumerate(np.array_split(np.arange(len(keys)), shards)):
    name = f"{weights_name}-{s + 1:05d}-of-{shards:05d}.safetensors"
    write_safetensors(os.path.join(folder, name), {keys[j]: state[keys[j]] for j in part})
    weight_map.update({keys[j]: name for j in part})
  with open(os.path.join(folder, f"{weights_name}.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return folder

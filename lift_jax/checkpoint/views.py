"""Views over a checkpoint's tensors (`keys`, `in`, `shape`, `read`, as `WeightFolder` has), so a
key table reads a folder under the names it expects: a prefix stripped, several folders joined."""

from __future__ import annotations

from typing import Any

from lift_jax.files import CheckpointError


class StripPrefix:
  """A `WeightFolder` seen with one key prefix removed (transformers 4.x writes `vision_model.`)."""

  def __init__(self, folder, prefix: str):
    self.folder = folder.folder
    self._inner = folder
    self._prefix = prefix
    self._map = {}
    for key in folder.keys():
      short = key[len(prefix):] if key.startswith(prefix) else key
      if short in self._map:
        raise CheckpointError(f"{self.folder}: holds both {key!r} and {self._map[short]!r}")
      self._map[short] = key

  def keys(self) -> list[str]:
    return list(self._map)

  def __contains__(self, key: str) -> bool:
    return key in self._map

  def shape(self, key: str):
    return self._inner.shape(self._map[key])

  def read(self, key: str):
    return self._inner.read(self._map[key])


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

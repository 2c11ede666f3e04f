"""Streaming reads of PyTorch checkpoints without PyTorch.

`SafetensorsFile` parses the header itself (so bfloat16 works and a truncated file is caught before
any tensor is used) and reads one tensor at a time. `WeightFolder` presents a diffusers/transformers
folder (one file, or shards with an `*.index.json`) as one key -> tensor mapping.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from lift_jax import files
from lift_jax.files import CheckpointError  # noqa: F401  (re-exported: its historic home)

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
  """One `.safetensors` file; tensors are read on demand as NumPy arrays."""

  def __init__(self, path: str):
    self.path = path
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
          raise CheckpointError(f"{path}: corrupt safetensors header (claims {n} bytes, file has {size})")
        header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
      raise CheckpointError(f"{path}: cannot read safetensors header: {err}") from err
    header.pop("__metadata__", None)
    self._data_start = 8 + n
    self._entries = {}
    for key, info in header.items():
      dtype = _DTYPES.get(info.get("dtype"))
      if dtype is None:
        raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
      start, end = info["data_offsets"]
      shape = tuple(info["shape"])
      if end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise CheckpointError(f"{path}: tensor {key!r} byte range does not match shape {shape}")
      if self._data_start + end > size:
        raise CheckpointError(
            f"{path}: truncated file: tensor {key!r} ends at byte {self._data_start + end}, "
            f"file has {size} bytes")
      self._entries[key] = (dtype, shape, start, end)

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._entries[key][1]

  def dtype(self, key: str) -> np.dtype:
    return np.dtype(self._entries[key][0])

  def read(self, key: str) -> np.ndarray:
    dtype, shape, start, end = self._entries[key]
    with open(self.path, "rb") as f:
      f.seek(self._data_start + start)
      buf = f.read(end - start)
    if len(buf) != end - start:
      raise CheckpointError(f"{self.path}: short read for tensor {key!r}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
  """Writes NumPy arrays (bfloat16 included) in the safetensors layout, atomically."""
  names = {np.dtype(v): k for k, v in _DTYPES.items()}
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  for key, arr in tensors.items():
    nbytes = arr.nbytes
    header[key] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                   "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with files.atomic_file(path) as tmp, open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in tensors.values():
      f.write(np.ascontiguousarray(arr).tobytes())


def write_sharded(folder: str, tensors: Iterable[tuple[str, np.ndarray]], *,
                  weights_name: str, max_shard_bytes: int = 5 * 1024**3) -> list[str]:
  """Streams (key, array) pairs into `save_pretrained`-style shards (+ index when more than one).

  Holds at most one shard's tensors in memory. Returns the shard file names.
  """
  shards: list[dict[str, np.ndarray]] = [{}]
  names: list[str] = []
  size = 0
  tmp_names = []

  def flush():
    name = f"{weights_name}.part{len(tmp_names)}.safetensors"
    write_safetensors(os.path.join(folder, name), shards[-1])
    tmp_names.append((name, list(shards[-1])))
    shards[-1] = {}

  for key, arr in tensors:
    if shards[-1] and size + arr.nbytes > max_shard_bytes:
      flush()
      size = 0
    shards[-1][key] = arr
    size += arr.nbytes
  if shards[-1] or not tmp_names:
    flush()
  total = len(tmp_names)
  weight_map = {}
  for n, (tmp_name, keys) in enumerate(tmp_names):
    name = (f"{weights_name}.safetensors" if total == 1
            else f"{weights_name}-{n + 1:05d}-of-{total:05d}.safetensors")
    os.replace(os.path.join(folder, tmp_name), os.path.join(folder, name))
    names.append(name)
    weight_map.update({k: name for k in keys})
  if total > 1:
    files.write_json(os.path.join(folder, f"{weights_name}.safetensors.index.json"),
                     {"metadata": {}, "weight_map": weight_map})
  return names


class WeightFolder:
  """All tensors of a checkpoint folder, by key, read lazily one at a time."""

  def __init__(self, folder: str, *, prefix_filter: Iterable[str] | None = None):
    if not os.path.isdir(folder):
      raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    self.folder = folder
    indexes = sorted(glob.glob(os.path.join(folder, "*.safetensors.index.json")))
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    self._where: dict[str, SafetensorsFile] = {}
    opened: dict[str, SafetensorsFile] = {}
    if indexes:
      try:
        with open(indexes[0]) as f:
          weight_map = json.load(f)["weight_map"]
      except (OSError, json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{indexes[0]}: unreadable index ({err})") from err
      for key, name in weight_map.items():
        path = os.path.join(folder, name)
        if path not in opened:
          if not os.path.exists(path):
            raise CheckpointError(f"{indexes[0]}: lists shard {name!r}, which is missing")
          opened[path] = SafetensorsFile(path)
        if key not in opened[path]._entries:
          raise CheckpointError(f"{path}: index lists tensor {key!r}, the shard does not hold it")
        self._where[key] = opened[path]
    elif files:
      for path in files:
        st = SafetensorsFile(path)
        for key in st.keys():
          self._where[key] = st
    else:
      raise CheckpointError(f"{folder}: no *.safetensors weights found")

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def shape(self, key: str) -> tuple[int, ...]:
    return self._where[key].shape(key)

  def read(self, key: str) -> np.ndarray:
    return self._where[key].read(key)

"""Files written whole or not at all, and JSON read with an error that names the file.

A leaf module (it imports nothing from lift_jax), so every layer can use it: a crash or an interrupt
never leaves a half-written output under its final name, and a missing or corrupt JSON file is
reported with its path and what was expected there.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator


class CheckpointError(ValueError):
  """A checkpoint file or folder is missing, corrupt or does not match the model."""


def read_json(path: str, what: str = "the model's config.json") -> dict:
  """A JSON file, or a CheckpointError naming it (missing or unreadable)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: missing (expected {what})")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
    raise CheckpointError(f"{path}: unreadable ({err})") from err


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path` (inside an atomic folder, or replaced atomically)."""
  with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`, renamed to `path` when the block completes."""
  tmp = f"{path}.tmp"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_directory(dst: str, *, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary folder beside `dst`, renamed to `dst` when the block completes.

  On any error (or interrupt) the temporary folder is removed, so `dst` is either the previous
  content or the complete new one, never half written.
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  try:
    yield tmp
    if os.path.exists(dst):
      shutil.rmtree(dst)
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def copy_matching(src: str, patterns: Iterable[str], dst: str) -> list[str]:
  """Copies the files of `src` matching any glob pattern into `dst` (created); returns their names."""
  os.makedirs(dst, exist_ok=True)
  copied = []
  for pattern in patterns:
    for path in sorted(glob.glob(os.path.join(src, pattern))):
      if os.path.isfile(path):
        shutil.copy2(path, dst)
        copied.append(os.path.basename(path))
  return copied

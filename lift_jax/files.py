"""Files written whole or not at all, and JSON read with an error that names the file.

A leaf module (it imports nothing from lift_jax), so every layer can use it: a crash or an interrupt
never leaves a half-written output under its final name, and a missing or corrupt JSON file is
reported with its path and what was expected there.

In a multi-process job (a pod) every process runs the same save onto one shared path: the folder's
temporary name is the same on all of them (orbax writes each process's shards into it), process 0
alone writes the plain files and renames the folder, and the processes wait for each other around
it, so no host races another's rename.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator

import jax
from jax.experimental import multihost_utils


def _others_write() -> bool:
  """True on processes 1.. of a multi-process job: process 0 writes the shared plain files."""
  return jax.process_count() > 1 and jax.process_index() != 0


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


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
  """Yields a temporary path beside `path`, renamed to `path` when the block completes (on process
  0 of a multi-process job; the others write a private file that is dropped)."""
  if _others_write():
    tmp = f"{path}.tmp-{jax.process_index()}"
    try:
      yield tmp
    finally:
      with contextlib.suppress(OSError):
        os.remove(tmp)
    return
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
  content or the complete new one, never half written. All processes of a multi-process job call
  it together (see the module doc).
  """
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
  parent = os.path.dirname(dst)
  if jax.process_count() > 1:
    with _shared_directory(dst, parent) as tmp:
      yield tmp
    return
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


@contextlib.contextmanager
def _shared_directory(dst: str, parent: str) -> Iterator[str]:
  """atomic_directory for several processes: one temporary name, process 0 renames."""
  tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-shared")
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  _barrier(f"atomic-directory-open:{dst}")
  try:
    yield tmp
    _barrier(f"atomic-directory-written:{dst}")
    if jax.process_index() == 0:
      if os.path.exists(dst):
        shutil.rmtree(dst)
      os.replace(tmp, dst)
    _barrier(f"atomic-directory-renamed:{dst}")
  except BaseException:
    if jax.process_index() == 0:
      shutil.rmtree(tmp, ignore_errors=True)
    raise


def copy_matching(src: str, patterns: Iterable[str], dst: str) -> list[str]:
  """Copies the files of `src` matching any glob pattern into `dst` (created); returns their names."""
  os.makedirs(dst, exist_ok=True)
  copied = []
  for pattern in patterns:
    for path in sorted(glob.glob(os.path.join(src, pattern))):
      if os.path.isfile(path):
        if not _others_write():  # process 0 writes the shared copy
          shutil.copy2(path, dst)
        copied.append(os.path.basename(path))
  return copied

"""Files on any filesystem etils.epath knows (local, gs://, s3://, ...): written whole or not at
all, and JSON read with an error that names the file.

A leaf module (it imports nothing from lift_jax), so every layer can use it. Every user-given path
(models, data, work dirs, outputs) goes through `etils.epath`, the layer orbax itself uses, so a
`gs://bucket/run` reaches the same code as a local folder. Paths stay strings at the boundaries;
`absolute` makes a local path absolute and leaves a URI as it is (`os.path.abspath("gs://b/x")`
would be the local `./gs:/b/x`).

Atomic writes: a file is written under a temporary name and renamed; a folder is built under a
temporary name beside its destination and renamed at the end. On a local disk a rename is atomic.
An object store (GCS, S3) has no rename: epath copies then deletes, object by object, so there
a folder's rename is not atomic (a crash mid-way leaves part of it under the final name); a single
object's upload is (it appears only once complete), so a remote file is written through a local
temporary copy and uploaded whole. Object stores have no append either: `append_lines` rewrites
the object.

Libraries that read only local files (the video codec, safetensors' mmap, tokenizers) get one
through `local_copy`; those that write only local files (the mp4 muxer, ArrayRecord) write
through `local_output`.

In a multi-process job (a pod) every process runs the same save onto one shared path: the folder's
temporary name is the same on all of them (orbax writes each process's shards into it), process 0
alone writes the plain files and renames the folder, and the processes wait for each other around
it, so no host races another's rename.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from typing import Any, Iterable, Iterator

import jax
from etils import epath
from jax.experimental import multihost_utils

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _others_write() -> bool:
  """True on processes 1.. of a multi-process job: process 0 writes the shared plain files."""
  return jax.process_count() > 1 and jax.process_index() != 0


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class CheckpointError(ValueError):
  """A checkpoint file or folder is missing, corrupt or does not match the model."""


# ----------------------------------------------------------------------------- paths


def is_local(path: str | os.PathLike) -> bool:
  """False for a URI (`gs://...`, `s3://...`), True for a plain file-system path."""
  return not _URI.match(os.fspath(path))


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path (`~` expanded for local paths)."""
  path = os.fspath(path)
  return epath.Path(os.path.expanduser(path) if is_local(path) else path)


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute (and `~` expanded); a URI unchanged."""
  path = os.fspath(path)
  return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path


def join(path: str | os.PathLike, *parts: str) -> str:
  """`os.path.join` that keeps a URI's scheme (`join("gs://b/x", "y")` -> `"gs://b/x/y"`)."""
  return str(as_path(path).joinpath(*parts)) if parts else os.fspath(path)


def normpath(path: str | os.PathLike) -> str:
  """`os.path.normpath` that keeps a URI's scheme (and its double slash)."""
  path = os.fspath(path)
  if is_local(path):
    return os.path.normpath(path)
  scheme, rest = path.split("://", 1)
  return f"{scheme}://{posixpath.normpath(rest)}"


def resolve(path: str | os.PathLike, base: str | os.PathLike) -> str:
  """`path` against the folder `base` (unless absolute or a URI), normalised."""
  path = os.fspath(path)
  if not is_local(path):
    return normpath(path)
  path = os.path.expanduser(path)
  return normpath(path if os.path.isabs(path) else join(absolute(base), path))


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
  """`path` relative to the folder `start` when both are on one filesystem (local, or the same
  URI scheme); else `path` unchanged."""
  path, start = os.fspath(path), os.fspath(start)
  if is_local(path) and is_local(start):
    return os.path.relpath(path, start)
  if is_local(path) or is_local(start) or path.split("://")[0] != start.split("://")[0]:
    return path
  return posixpath.relpath("/" + path.split("://", 1)[1], "/" + start.split("://", 1)[1])


def parent(path: str | os.PathLike) -> str:
  """The folder holding `path` (for a relative local path, the absolute folder)."""
  return str(as_path(absolute(path)).parent)


def exists(path: str | os.PathLike) -> bool:
  return as_path(path).exists()


def isfile(path: str | os.PathLike) -> bool:
  p = as_path(path)
  return p.exists() and not p.is_dir()


def isdir(path: str | os.PathLike) -> bool:
  return as_path(path).is_dir()


def makedirs(path: str | os.PathLike) -> None:
  as_path(path).mkdir(parents=True, exist_ok=True)


def remove(path: str | os.PathLike) -> None:
  """Deletes a file if it exists."""
  as_path(path).unlink(missing_ok=True)


def rmtree(path: str | os.PathLike) -> None:
  """Deletes a folder and its content if it exists."""
  p = as_path(path)
  if p.exists():
    p.rmtree(missing_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
  """The names in a folder, sorted."""
  return sorted(p.name for p in as_path(path).iterdir())


def open_file(path: str | os.PathLike, mode: str = "r"):
  """`open` for any filesystem (text modes are UTF-8)."""
  return as_path(path).open(mode)


def read_text(path: str | os.PathLike) -> str:
  return as_path(path).read_text(encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
  """`text` at `path`, replaced atomically."""
  with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def append_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Appends lines (each gets a newline) to a text file, created (maybe empty) if missing. An
  object store has no append: the object is read and written again whole."""
  text = "".join(line + "\n" for line in lines)
  if is_local(path):
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)
    return
  p = as_path(path)
  old = p.read_text(encoding="utf-8") if p.exists() else None
  if old is not None and not text:
    return
  with p.open("w") as f:
    f.write((old or "") + text)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
  """A local path with `path`'s content, for libraries that read only local files (a video codec,
  safetensors' mmap): `path` itself when local, else a temporary copy of the file or folder,
  deleted after the block."""
  path = os.fspath(path)
  if is_local(path):
    yield path
    return
  src = as_path(path)
  tmp = tempfile.mkdtemp(prefix="lift_jax-copy-")
  try:
    dst = os.path.join(tmp, src.name or "file")
    _copy_tree(src, epath.Path(dst)) if src.is_dir() else src.copy(dst)
    yield dst
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_output(path: str | os.PathLike) -> Iterator[str]:
  """A local path to write `path` through, for libraries that write only local files (the mp4
  muxer, ArrayRecord): `path` itself when local, else a temporary local file or folder uploaded to
  `path` when the block completes (dropped on error)."""
  path = os.fspath(path)
  if is_local(path):
    yield path
    return
  tmp = tempfile.mkdtemp(prefix="lift_jax-out-")
  try:
    local = os.path.join(tmp, as_path(path).name or "out")
    yield local
    if os.path.isdir(local):
      _copy_tree(epath.Path(local), as_path(path))
    elif os.path.exists(local):
      makedirs(parent(path))
      epath.Path(local).copy(as_path(path), overwrite=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


_MIRRORS: dict[str, str] = {}


def local_mirror(path: str | os.PathLike | None) -> str | None:
  """A local path with `path`'s content for as long as the process lives, for readers that keep
  a file open or read only local files (ArrayRecord data sources, model folders: safetensors'
  mmap, tokenizers): `path` itself when local (or None), else a copy made once per process and
  deleted at exit (`original` maps a path inside it back)."""
  if path is None:
    return None
  path = os.fspath(path)
  if is_local(path):
    return path
  if path not in _MIRRORS:
    tmp = tempfile.mkdtemp(prefix="lift_jax-mirror-")
    atexit.register(shutil.rmtree, tmp, True)
    dst = os.path.join(tmp, as_path(path).name or "data")
    src = as_path(path)
    _copy_tree(src, epath.Path(dst)) if src.is_dir() else src.copy(dst)
    _MIRRORS[path] = dst
  return _MIRRORS[path]


def original(path: str | None) -> str | None:
  """The user's path (`gs://...`) for a path inside a `local_mirror` copy; else `path`."""
  for remote, local in _MIRRORS.items():
    if path and (path == local or path.startswith(local + os.sep)):
      return remote + path[len(local):]
  return path


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  """Copies a folder file by file (epath copies single files only)."""
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      _copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name, overwrite=True)


# ----------------------------------------------------------------------------- JSON


def read_json(path: str | None, what: str = "the model's config.json", *,
              missing_ok: bool = False) -> dict:
  """A JSON file, or a CheckpointError naming it (missing or unreadable); with `missing_ok`, {}
  for a file (or path) that is not there yet."""
  if not path or not isfile(path):
    if missing_ok:
      return {}
    raise CheckpointError(f"{path}: missing (expected {what})")
  try:
    return json.loads(read_text(path))
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
    raise CheckpointError(f"{path}: unreadable ({err})") from err


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path` (inside an atomic folder, or replaced atomically)."""
  write_text(path, json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_file(path: str, *, own: bool = False) -> Iterator[str]:
  """Yields a local temporary path to write (with any library), moved to `path` when the block
  completes: renamed beside it on a local disk, uploaded whole to an object store. On processes
  1.. of a multi-process job the file written is private and dropped (process 0 writes the shared
  file), unless `own`: a file of this process's own (its shard), written by every process."""
  if _others_write() and not own:
    tmp = tempfile.mkdtemp(prefix="lift_jax-unused-")
    try:
      yield os.path.join(tmp, "file")
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return
  if not is_local(path):
    with local_output(path) as tmp:
      yield tmp
    return
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
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
  content or the complete new one, never half written (on an object store, see the module doc).
  All processes of a multi-process job call it together (see the module doc).
  """
  dst = absolute(dst)
  if exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
  folder = parent(dst)
  if jax.process_count() > 1:
    with _shared_directory(dst, folder) as tmp:
      yield tmp
    return
  makedirs(folder)
  tmp = join(folder, f".{as_path(dst).name}.tmp-{uuid.uuid4().hex[:8]}")
  makedirs(tmp)
  try:
    yield tmp
    _replace_dir(tmp, dst)
  except BaseException:
    rmtree(tmp)
    raise


def _replace_dir(tmp: str, dst: str) -> None:
  """`tmp` renamed to `dst`, replacing it (copy + delete on an object store)."""
  rmtree(dst)
  as_path(tmp).rename(as_path(dst))


@contextlib.contextmanager
def _shared_directory(dst: str, folder: str) -> Iterator[str]:
  """atomic_directory for several processes: one temporary name, process 0 renames."""
  tmp = join(folder, f".{as_path(dst).name}.tmp-shared")
  if jax.process_index() == 0:
    rmtree(tmp)
    makedirs(tmp)
  _barrier(f"atomic-directory-open:{dst}")
  try:
    yield tmp
    _barrier(f"atomic-directory-written:{dst}")
    if jax.process_index() == 0:
      _replace_dir(tmp, dst)
    _barrier(f"atomic-directory-renamed:{dst}")
  except BaseException:
    if jax.process_index() == 0:
      rmtree(tmp)
    raise


def copy_matching(src: str, patterns: Iterable[str], dst: str) -> list[str]:
  """Copies the files of `src` matching any glob pattern into `dst` (created); returns their names."""
  makedirs(dst)
  copied = []
  for pattern in patterns:
    for path in sorted(as_path(src).glob(pattern), key=str):
      if not path.is_dir():
        if not _others_write():  # process 0 writes the shared copy
          path.copy(as_path(dst) / path.name, overwrite=True)
        copied.append(path.name)
  return copied

"""What every model loader shares: reading a config.json, telling a converted checkpoint from an
upstream folder, and writing an output folder atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator, TypeVar

from lift_jax.checkpoint.safetensors import CheckpointError

T = TypeVar("T")


def read_json(path: str, what: str = "the model's config.json") -> dict:
  """A JSON file, or a CheckpointError naming it (missing or unreadable)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: missing (expected {what})")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
    raise CheckpointError(f"{path}: unreadable ({err})") from err


def model_config(path: str, *, kind: str, folder: Callable[[str], str],
                 parse: Callable[[dict], T], what: str) -> T:
  """The config of a converted checkpoint of `kind`, or of the upstream folder `folder(path)`.

  `parse` turns the JSON into the model's config; its TypeError/ValueError becomes a
  CheckpointError naming the file.
  """
  from lift_jax.checkpoint import store  # store writes through atomic_directory below

  if store.is_converted(path):
    meta = store.read_meta(path)
    if meta["kind"] != kind:
      raise CheckpointError(f"{path}: holds a {meta['kind']!r} checkpoint, not {kind!r}")
    config, where = meta["config"], os.path.join(path, store.META_FILE)
  else:
    where = os.path.join(folder(path), "config.json")
    config = read_json(where, what)
  try:
    return parse(config)
  except CheckpointError:
    raise
  except (TypeError, ValueError) as err:
    raise CheckpointError(f"{where}: {err}") from err


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


def export_folder(dst: str, config: dict, tensors: Iterable[tuple[str, Any]], *, weights_name: str,
                  max_shard_bytes: int = 5 * 1024**3, overwrite: bool = False) -> str:
  """An upstream-layout folder: config.json + `weights_name` safetensors shards (+ index), atomic."""
  from lift_jax.checkpoint.safetensors import write_sharded

  with atomic_directory(dst, overwrite=overwrite) as tmp:
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
    write_sharded(tmp, tensors, weights_name=weights_name, max_shard_bytes=max_shard_bytes)
  return os.path.abspath(dst)


def vila_part(path: str, subfolder: str, what: str) -> str:
  """A component folder itself, or the `subfolder/` of a VILA root (whose config has `llm_cfg`)."""
  from lift_jax.checkpoint import store

  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: {what} folder does not exist")
  nested = os.path.join(path, subfolder)
  if os.path.isdir(nested) and not store.is_converted(path):
    top = os.path.join(path, "config.json")
    if not os.path.isfile(top) or "llm_cfg" in read_json(top, "a config"):
      return nested
  return path


def load_model(path: str, make: Callable[[], Any], *, weights: Callable[[str], Any], rules,
               mesh=None, ignore: Iterable[str] = (), progress: bool = False):
  """A converted checkpoint restored onto its shards, or an upstream folder streamed through its
  key table (`weights(path)` gives the folder's tensors, `rules` the table)."""
  from lift_jax.checkpoint import store
  from lift_jax.checkpoint.tables import load_from_table

  if store.is_converted(path):
    return store.restore_model(path, make, mesh=mesh)
  return load_from_table(make, weights(path), rules, mesh=mesh, ignore=ignore, progress=progress)

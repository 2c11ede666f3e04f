"""Converted checkpoints: an orbax parameter tree plus the model's config, written atomically.

Layout of a converted folder:
  lift_jax.json   {"format": 1, "kind": "<model kind>", "config": {...}}
  params/         orbax StandardCheckpointer tree of the model's parameters
The folder is first written under a temporary name beside `dst` and renamed at the end, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from lift_jax.checkpoint.safetensors import CheckpointError
from lift_jax.parallel import mesh as mesh_lib

META_FILE = "lift_jax.json"
FORMAT_VERSION = 1


def is_converted(path: str) -> bool:
  return os.path.isfile(os.path.join(path, META_FILE))


def read_meta(path: str) -> dict[str, Any]:
  meta_path = os.path.join(path, META_FILE)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as err:
    raise CheckpointError(f"{meta_path}: unreadable converted-checkpoint metadata ({err})") from err
  if meta.get("format") != FORMAT_VERSION or "kind" not in meta or "config" not in meta:
    raise CheckpointError(f"{meta_path}: not a lift_jax converted checkpoint (format {FORMAT_VERSION})")
  return meta


def save_model(dst: str, kind: str, config: dict[str, Any], model: nnx.Module, *,
               overwrite: bool = False) -> str:
  """Saves `model`'s parameters and `config` to `dst` atomically; returns `dst`."""
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  try:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, "params"), params)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump({"format": FORMAT_VERSION, "kind": kind, "config": config}, f, indent=2)
    if os.path.exists(dst):
      shutil.rmtree(dst)
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def restore_model(path: str, make_model: Callable[[], nnx.Module], *, mesh: Mesh | None = None,
                  rules=mesh_lib.DEFAULT_RULES) -> nnx.Module:
  """Restores a converted checkpoint straight onto the shards of `mesh` (default: one device)."""
  abstract_model = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract_model)
  mesh = mesh or mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
  shardings = mesh_lib.param_shardings(abstract_state, mesh, rules)
  target = jax.tree.map(
      lambda var, sh: jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sh),
      nnx.to_pure_dict(abstract_state), nnx.to_pure_dict(shardings))
  params_dir = os.path.join(os.path.abspath(path), "params")
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{path}: converted checkpoint has no params/ folder")
  try:
    restored = ocp.StandardCheckpointer().restore(params_dir, target)
  except Exception as err:
    raise CheckpointError(f"{params_dir}: cannot restore parameters ({type(err).__name__}: "
                          f"{err})") from err
  nnx.replace_by_pure_dict(abstract_state, restored)
  return nnx.merge(graphdef, abstract_state)

"""Converted checkpoints: an orbax parameter tree plus the model's config, written atomically.

Layout of a converted folder:
  lift_jax.json   {"format": 1, "kind": "<model kind>", "config": {...}}
  params/         orbax StandardCheckpointer tree of the model's parameters
The folder is first written under a temporary name beside `dst` and renamed at the end, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from lift_jax import files
from lift_jax.files import CheckpointError
from lift_jax.parallel import mesh as mesh_lib

META_FILE = "lift_jax.json"
FORMAT_VERSION = 1


def is_converted(path: str) -> bool:
  return os.path.isfile(os.path.join(path, META_FILE))


def read_meta(path: str) -> dict[str, Any]:
  meta_path = os.path.join(path, META_FILE)
  meta = files.read_json(meta_path, "lift_jax's converted-checkpoint metadata")
  if meta.get("format") != FORMAT_VERSION or "kind" not in meta or "config" not in meta:
    raise CheckpointError(f"{meta_path}: not a lift_jax converted checkpoint (format {FORMAT_VERSION})")
  return meta


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _checkpointer() -> ocp.Checkpointer:
  # Synchronous, with at most ~1 GB in flight device -> host: the host copy is what would
  # otherwise double a conversion's peak memory.
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(save_concurrent_gb=1,
                                                      save_device_host_concurrent_gb=1))


def save_streaming(dst: str, kind: str, config: dict[str, Any],
                   arrays: Iterable[tuple[str, jax.Array]], *, overwrite: bool = False,
                   group_bytes: int = 512 * 1024**2,
                   extra: Callable[[str], None] | None = None) -> str:
  """Saves parameters as they arrive, in groups of about `group_bytes`, releasing each group.

  `arrays` yields (dotted NNX path, array); each group is one orbax checkpoint under
  `params/NNNNN/`, so peak memory is one group, not the model. `extra(folder)` may add files.
  """
  with files.atomic_directory(dst, overwrite=overwrite) as tmp:
    groups: list[list[str]] = []
    pending: dict[str, jax.Array] = {}
    size = 0
    checkpointer = _checkpointer()

    def flush():
      checkpointer.save(os.path.join(tmp, "params", f"{len(groups):05d}"), _nest(pending))
      groups.append(sorted(pending))
      pending.clear()

    for path, array in arrays:
      if pending and size + array.nbytes > group_bytes:  # a group never outgrows its budget
        flush()
        size = 0
      pending[path] = array
      size += array.nbytes
    if pending or not groups:
      flush()
    files.write_json(os.path.join(tmp, META_FILE), {"format": FORMAT_VERSION, "kind": kind,
                                                    "config": config, "groups": groups})
    if extra is not None:
      extra(tmp)
  return os.path.abspath(dst)


def save_model(dst: str, kind: str, config: dict[str, Any], model: nnx.Module, *,
               overwrite: bool = False, extra: Callable[[str], None] | None = None) -> str:
  """Saves `model`'s parameters and `config` to `dst` atomically; returns `dst`."""
  flat = [(".".join(str(getattr(k, "key", k)) for k in path), var[...])
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  return save_streaming(dst, kind, config, flat, overwrite=overwrite, extra=extra)


def restore_model(path: str, make_model: Callable[[], nnx.Module], *, mesh: Mesh | None = None,
                  rules=mesh_lib.DEFAULT_RULES) -> nnx.Module:
  """Restores a converted checkpoint straight onto the shards of `mesh` (default: one device)."""
  meta = read_meta(path)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  mesh = mesh or mesh_lib.make_mesh({"data": 1}, jax.local_devices()[:1])  # this host's
  shardings = mesh_lib.param_shardings(abstract_state, mesh, rules)
  flat_state = nnx.to_flat_state(abstract_state)
  dotted = lambda p: ".".join(str(getattr(k, "key", k)) for k in p)
  targets = {dotted(p): jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh.value
                                             if isinstance(sh, nnx.Variable) else sh)
             for (p, v), (_, sh) in zip(flat_state, nnx.to_flat_state(shardings))}
  saved = {p for group in meta.get("groups", []) for p in group}
  if saved != set(targets):
    missing, extra = sorted(set(targets) - saved), sorted(saved - set(targets))
    raise CheckpointError(f"{path}: converted checkpoint does not match the model "
                          f"(missing {missing[:20]}, unexpected {extra[:20]})")
  values: dict[str, jax.Array] = {}
  checkpointer = _checkpointer()
  for g, group in enumerate(meta["groups"]):
    group_dir = os.path.join(os.path.abspath(path), "params", f"{g:05d}")
    try:
      restored = checkpointer.restore(
          group_dir, args=ocp.args.PyTreeRestore(
              item=_nest({p: targets[p] for p in group}),
              restore_args=_nest({p: ocp.ArrayRestoreArgs(sharding=targets[p].sharding,
                                                           dtype=targets[p].dtype)
                                  for p in group})))
    except Exception as err:
      raise CheckpointError(f"{group_dir}: cannot restore parameters ({type(err).__name__}: "
                            f"{err})") from err
    for p in group:
      node = restored
      for k in p.split("."):
        node = node[k]
      values[p] = node
  for p, var in flat_state:
    var.value = values[dotted(p)]
  return nnx.merge(graphdef, nnx.from_flat_state(flat_state))

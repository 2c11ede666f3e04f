"""Device mesh, logical-axis rules and the checks that make a bad layout fail early and clearly.

Mesh axes are always ('data', 'fsdp', 'tensor', 'context'); a config gives their sizes, one of which
may be -1 ("the rest of the devices"). Parameters and activations carry logical axis names; the rules
below map them onto mesh axes. One code path serves one CPU, a GPU node and a TPU pod.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "context")

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "context"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("time_embed", None),
    ("text_embed", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "lift_jax_mesh", default=None)


def resolve_axis_sizes(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in the one -1 axis and checks the product equals the device count."""
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
  sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {free}")
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"mesh axes {sizes} do not divide the {num_devices} devices")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh axes {sizes} multiply to {math.prod(sizes.values())}, "
                     f"but there are {num_devices} devices")
  return sizes


def make_mesh(axes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices; default: everything on 'fsdp'."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_axis_sizes(dict(axes or {"fsdp": -1}), len(devices))
  shape = tuple(sizes[name] for name in MESH_AXES)
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # CPU and odd topologies: plain order is fine
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(axes: Mapping[str, int] | None, devices: Sequence[jax.Device] | None = None,
                     *, single_device_none: bool = False) -> Mesh | None:
  """A stage's mesh from its config's axis sizes: sizes without a -1 take the first of `devices`
  (default: all), so a one-device run on a bigger host works; with `single_device_none`, a
  one-device mesh is None (no sharding annotations to pay for)."""
  devices = list(jax.devices() if devices is None else devices)
  if axes and all(int(v) != -1 for v in axes.values()):
    devices = devices[:math.prod(int(v) for v in axes.values())]
  mesh = make_mesh(axes or {"fsdp": -1}, devices)
  return None if single_device_none and mesh.size == 1 else mesh


def logical_to_spec(logical: Sequence[str | None] | None, rules=DEFAULT_RULES) -> PartitionSpec:
  """Maps a tuple of logical names to a PartitionSpec; a mesh axis is used at most once."""
  if logical is None:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in logical:
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used)
    used.update(targets)
    out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*out)


def axis_size(mesh: Mesh, entry: Any) -> int:
  if entry is None:
    return 1
  names = (entry,) if isinstance(entry, str) else entry
  return math.prod(mesh.shape[n] for n in names)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """NamedSharding for every Variable in `abstract_state`, from its logical `out_sharding` names.

  Fails with every parameter whose dimension does not divide its mesh axes, named.
  """
  problems = []

  def one(path, var):
    logical = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
    shape = var.shape if hasattr(var, "shape") else var[...].shape
    spec = logical_to_spec(logical, rules)
    for dim, entry in zip(shape, spec):
      if dim % axis_size(mesh, entry):
        problems.append(f"{_path_str(path)}: dim {dim} not divisible by mesh axis {entry} "
                        f"(size {axis_size(mesh, entry)})")
    return NamedSharding(mesh, spec)

  out = jax.tree_util.tree_map_with_path(
      one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  if problems:
    raise ValueError("parameters do not fit the mesh:\n  " + "\n  ".join(problems))
  return out


def _path_str(path) -> str:
  parts = []
  for p in path:
    key = getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))
    parts.append(str(key))
  return ".".join(parts)


def check_divisible(mesh: Mesh, **sizes: int) -> None:
  """Checks model and batch sizes against the mesh before anything is compiled.

  Keywords: heads (by 'tensor'), kv_heads (by 'tensor'), tokens (by 'context'),
  batch (by 'data'×'fsdp'). Names every offending pair.
  """
  against = {
      "heads": ("tensor",), "kv_heads": ("tensor",), "tokens": ("context",),
      "batch": ("data", "fsdp"),
  }
  problems = []
  for name, value in sizes.items():
    if value is None:
      continue
    if name not in against:
      raise ValueError(f"check_divisible: unknown size {name!r}; known: {sorted(against)}")
    axes = against[name]
    n = math.prod(mesh.shape[a] for a in axes)
    if value % n:
      problems.append(f"{name}={value} is not divisible by mesh axis {'×'.join(axes)}={n}")
  if problems:
    raise ValueError("model/batch sizes do not fit the mesh " + _mesh_str(mesh) + ": "
                     + "; ".join(problems))


def _mesh_str(mesh: Mesh) -> str:
  return "(" + ", ".join(f"{k}={v}" for k, v in mesh.shape.items()) + ")"


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES) -> Iterator[Mesh]:
  """Makes `mesh` and `rules` current, so `constrain` annotates activations."""
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, tuple] | None:
  """The (mesh, rules) made current by `use_mesh`, else None (what shard_map-wrapped kernels read)."""
  return _ACTIVE.get()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Annotates an activation with logical axes under `use_mesh`; a no-op without a mesh."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(logical, rules)
  # Uneven dims stay unconstrained rather than failing deep inside XLA.
  spec = PartitionSpec(*[e if d % axis_size(mesh, e) == 0 else None for d, e in zip(x.shape, spec)])
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

"""Declarative PyTorch -> NNX parameter tables and the streaming loader that applies them.

A model's `params.py` lists `Rule(src, dst, transform)` rows: `src` is a PyTorch state-dict key (with
`{i}` for the layer index of stacked blocks), `dst` the dotted NNX path, `transform` a function
written with array methods only (`.T`, `.reshape`, `.transpose`) so shapes can be checked abstractly.

`load_from_table` checks every key and shape first and reports all problems at once; then it reads
one tensor at a time, converts it to the parameter dtype and places it directly onto its shard. The
model is built abstractly (`nnx.eval_shape`), so no full copy of the weights is ever held twice:
stacked parameters are filled in place, one layer at a time, in a donated device buffer.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder
from lift_jax.parallel import mesh as mesh_lib


def identity(x):
  return x


def linear(x):
  """torch Linear weight [out, in] -> kernel [in, out]."""
  return x.T


def heads_in(d: int, n: int, h: int) -> tuple[Callable, Callable]:
  """(transform, inverse) of a projection into heads: torch weight [N·H, D] <-> kernel [D, N, H]."""
  return (lambda w: w.T.reshape(d, n, h)), (lambda k: k.reshape(d, n * h).T)


def heads_out(n: int, h: int, d: int) -> tuple[Callable, Callable]:
  """(transform, inverse) of the projection out of heads: torch [D, N·H] <-> kernel [N, H, D]."""
  return (lambda w: w.T.reshape(n, h, d)), (lambda k: k.reshape(n * h, d).T)


def head_bias(n: int, h: int) -> tuple[Callable, Callable]:
  """(transform, inverse) of a per-head bias: [N·H] <-> [N, H]."""
  return (lambda b: b.reshape(n, h)), (lambda b: b.reshape(-1))


@dataclasses.dataclass(frozen=True)
class Rule:
  src: str
  dst: str
  transform: Callable = identity
  # NNX value -> PyTorch tensor, for export; identity and `linear` invert themselves.
  inverse: Callable | None = None
  # When set, a checkpoint without this key is accepted and the parameter is filled with zeros.
  zeros_if_missing: bool = False

  @property
  def stacked(self) -> bool:
    return "{i}" in self.src

  def to_torch(self, value):
    if self.inverse is not None:
      return self.inverse(value)
    if self.transform in (identity, linear):
      return self.transform(value)
    raise NotImplementedError(f"table row {self.src!r} has no inverse transform for export")


def _path_str(path: Sequence) -> str:
  return ".".join(str(getattr(p, "key", p)) for p in path)


def flat_variables(state: nnx.State) -> dict[str, nnx.Variable]:
  return {_path_str(path): var for path, var in nnx.to_flat_state(state)}


def check_table(folder: WeightFolder, rules: Sequence[Rule], abstract: dict[str, nnx.Variable],
                ignore: Iterable[str] = ()) -> None:
  """Raises one CheckpointError listing every missing, unexpected and wrongly shaped key."""
  ignore = tuple(ignore)
  expected: dict[str, tuple[Rule, int | None]] = {}
  problems_table = []
  covered = set()
  for rule in rules:
    if rule.dst not in abstract:
      problems_table.append(f"table row {rule.src!r} -> {rule.dst!r}: the model has no such parameter")
      continue
    covered.add(rule.dst)
    if rule.stacked:
      for i in range(abstract[rule.dst].shape[0]):
        expected[rule.src.format(i=i)] = (rule, i)
    else:
      expected[rule.src] = (rule, None)
  uncovered = sorted(set(abstract) - covered)
  if uncovered or problems_table:
    raise CheckpointError("internal parameter table error:\n  " + "\n  ".join(
        problems_table + [f"model parameter {p!r} has no table row" for p in uncovered]))

  present = set(folder.keys())
  missing = sorted(k for k in set(expected) - present if not expected[k][0].zeros_if_missing)
  unexpected = sorted(k for k in present - set(expected)
                      if not any(fnmatch.fnmatch(k, pat) for pat in ignore))
  wrong = []
  for key in sorted(set(expected) & present):
    rule, i = expected[key]
    src_shape = folder.shape(key)
    want = abstract[rule.dst].shape[1:] if i is not None else abstract[rule.dst].shape
    try:
      got = jax.eval_shape(rule.transform, jax.ShapeDtypeStruct(src_shape, jnp.float32)).shape
    except Exception:  # a reshape that cannot apply to this shape
      got = None
    if got != tuple(want):
      wrong.append(f"{key}: checkpoint shape {tuple(src_shape)} does not convert to the "
                   f"expected {tuple(want)} of {rule.dst}")
  if missing or unexpected or wrong:
    lines = [f"{folder.folder}: checkpoint does not match the model"]
    if missing:
      lines += [f"missing keys ({len(missing)}):"] + [f"  {k}" for k in missing]
    if unexpected:
      lines += [f"unexpected keys ({len(unexpected)}):"] + [f"  {k}" for k in unexpected]
    if wrong:
      lines += [f"wrong shapes ({len(wrong)}):"] + [f"  {w}" for w in wrong]
    raise CheckpointError("\n".join(lines))


@jax.jit(donate_argnums=0)
def _set_layer(buf, row, i):
  """Writes layer `i` of a stacked parameter in place (the buffer is donated)."""
  return jax.lax.dynamic_update_index_in_dim(buf, row, i, 0)


def _zeros(shape, dtype, sharding):
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


def stream_from_table(abstract_state: nnx.State, folder: WeightFolder, rules: Sequence[Rule], *,
                      mesh: Mesh | None = None, rules_logical=mesh_lib.DEFAULT_RULES,
                      ignore: Iterable[str] = (),
                      progress: bool = False) -> Iterator[tuple[str, jax.Array]]:
  """Checks the table, then yields (NNX path, array on its shards) one parameter at a time.

  Stacked parameters are assembled in place in a donated device buffer, one layer at a time, so
  the largest transient is one layer's tensor.
  """
  variables = flat_variables(abstract_state)
  check_table(folder, rules, variables, ignore)
  mesh = mesh or mesh_lib.make_mesh({"data": 1}, jax.local_devices()[:1])  # this host's
  shardings = flat_variables(mesh_lib.param_shardings(abstract_state, mesh, rules_logical))
  iterator = tqdm(rules, desc="loading", unit="param") if progress else rules
  for rule in iterator:
    var = variables[rule.dst]
    dtype = var.dtype
    sharding = shardings[rule.dst]
    sharding = sharding.value if isinstance(sharding, nnx.Variable) else sharding
    if rule.zeros_if_missing and rule.src not in folder:
      yield rule.dst, _zeros(var.shape, dtype, sharding)
      continue
    if not rule.stacked:
      yield rule.dst, jax.device_put(
          np.asarray(rule.transform(folder.read(rule.src))).astype(dtype), sharding)
      continue
    row_sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    buf = _zeros(var.shape, dtype, sharding)
    for i in range(var.shape[0]):
      row = np.asarray(rule.transform(folder.read(rule.src.format(i=i)))).astype(dtype)
      buf = _set_layer(buf, jax.device_put(row, row_sharding), np.int32(i))
      del row
    yield rule.dst, buf


def load_from_table(make_model: Callable[[], nnx.Module], folder: WeightFolder,
                    rules: Sequence[Rule], *, mesh: Mesh | None = None,
                    rules_logical=mesh_lib.DEFAULT_RULES, ignore: Iterable[str] = (),
                    progress: bool = False) -> nnx.Module:
  """Builds `make_model()` abstractly and fills it from `folder` through the table `rules`."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  values = dict(stream_from_table(abstract_state, folder, rules, mesh=mesh,
                                  rules_logical=rules_logical, ignore=ignore, progress=progress))
  flat = nnx.to_flat_state(abstract_state)
  for path, var in flat:
    var.value = values[_path_str(path)]
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def export_tensors(model: nnx.Module, rules: Sequence[Rule]) -> Iterable[tuple[str, np.ndarray]]:
  """Yields (PyTorch key, NumPy tensor) for every row, one layer at a time (for export)."""
  variables = flat_variables(nnx.state(model))
  for rule in rules:
    value = variables[rule.dst][...]
    if rule.stacked:
      for i in range(value.shape[0]):
        yield rule.src.format(i=i), np.asarray(rule.to_torch(np.asarray(value[i])))
    else:
      yield rule.src, np.asarray(rule.to_torch(np.asarray(value)))

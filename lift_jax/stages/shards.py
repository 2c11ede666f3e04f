"""Per-host shard files of a multi-process stage and their merge.

Each process takes its share of the work by global index (`parallel.process_share`), appends its
rows to its own `NAME-00000-of-00002.jsonl` beside the single file `NAME.jsonl`, and after a
barrier process 0 merges the shards into `NAME.jsonl` (rows in global-index order) and removes
them. With one process the shard *is* `NAME.jsonl`, so a single-host run writes exactly what it
always did.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import jax

from lift_jax import files, parallel
from lift_jax.data import records


def shard_path(path: str, index: int | None = None, count: int | None = None) -> str:
  """`dir/NAME.jsonl` -> `dir/NAME-0000i-of-0000n.jsonl` (the path itself for one process)."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if count == 1:
    return path
  stem, ext = os.path.splitext(path)  # string work: a URI keeps its scheme
  return f"{stem}-{index:05d}-of-{count:05d}{ext}"


def read_rows(path: str, read: Callable[[str], list[dict]] = records.read_jsonl) -> list[dict]:
  """The rows of `path` (none when it does not exist)."""
  return read(path) if files.exists(path) else []


def merge(path: str, order: Callable[[dict], object], *, keep: Iterable[dict] = (),
          read: Callable[[str], list[dict]] = records.read_jsonl) -> list[dict]:
  """After every process wrote its shard: process 0 writes `path` from `keep` (rows to carry over)
  and every shard (sorted by `order`), then removes the shards. Every process returns the merged
  rows. A no-op for one process (its shard is `path`)."""
  count = jax.process_count()
  if count == 1:
    return read_rows(path, read)
  parallel.barrier(f"shards-written:{path}")
  shards = [shard_path(path, i, count) for i in range(count)]
  if jax.process_index() == 0:
    rows = list(keep) + sorted((r for s in shards for r in read_rows(s, read)), key=order)
    records.write_jsonl(path, rows)
    for s in shards:
      files.remove(s)
  parallel.barrier(f"shards-merged:{path}")
  return read_rows(path, read)

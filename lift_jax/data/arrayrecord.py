"""TFDS ArrayRecord dataset folders, written and opened without TensorFlow: the one writer behind
every dataset here (the HRA ratings, the prepared reward latents).

A dataset is written from example streams (split -> iterable of (key, example)) under a temporary
name beside `out_dir` and renamed into place at the end (an existing folder is swapped out only
then), so an interrupted run leaves no half-written dataset. Opening gives split -> a random-access
source (`len`, `[i]` -> dict of numpy arrays and bytes), picklable for grain workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from typing import Any, Callable, Iterable

from lift_jax import files

_BUILDERS: dict[str, type] = {}


def tfds():
  """tensorflow_datasets, imported on first use (only writing or opening a dataset needs it)."""
  import tensorflow_datasets
  return tensorflow_datasets


def _camel(name: str) -> str:
  return "".join(part.capitalize() for part in name.split("_"))


def builder_class(name: str) -> type:
  """The GeneratorBasedBuilder of dataset `name` (TFDS registers builders by class name, so one
  class a name, defined on first use). Its examples, features and metadata are given at
  construction."""
  if name in _BUILDERS:
    return _BUILDERS[name]
  t = tfds()

  def __init__(self, *, streams, features, metadata, description, **kw):
    self._streams, self._features = streams, features
    self._extra_metadata, self._description = dict(metadata or {}), description
    t.core.GeneratorBasedBuilder.__init__(self, **kw)

  def _info(self):
    return t.core.DatasetInfo(
        builder=self, description=self._description, features=self._features,
        metadata=t.core.MetadataDict(self._extra_metadata),
        # Keep the writing order: loaders shuffle, and a stable order makes runs comparable.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._streams}

  def _generate_examples(self, split):
    yield from self._streams[split]

  cls = type(_camel(name), (t.core.GeneratorBasedBuilder,), {
      "VERSION": t.core.Version("1.0.0"), "RELEASE_NOTES": {"1.0.0": "lift_jax"},
      "BUILDER_CONFIGS": [t.core.BuilderConfig(name="default")], "__init__": __init__,
      "_info": _info, "_split_generators": _split_generators,
      "_generate_examples": _generate_examples, "__module__": __name__})
  _BUILDERS[name] = cls
  return cls


def write_arrayrecord(out_dir: str, *, name: str, features, splits: dict[str, Iterable[tuple]],
                      description: str = "", metadata: dict | None = None,
                      extra_files: dict[str, Callable[[], str]] | None = None,
                      overwrite: bool = False) -> str:
  """Writes `splits` (split -> iterable of (key, example); each must yield at least one: TFDS has
  no empty splits) as an ArrayRecord TFDS dataset at `out_dir`, atomically.

  `extra_files` (file name -> function returning its text) are written beside the shards once the
  examples are consumed (reports and logs). An existing `out_dir` is an error unless `overwrite`.
  """
  t = tfds()
  out_dir = files.absolute(out_dir)
  if files.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  if not files.is_local(out_dir):  # ArrayRecord writes local files: build here, then upload
    with files.local_output(out_dir) as local:
      write_arrayrecord(local, name=name, features=features, splits=splits,
                        description=description, metadata=metadata, extra_files=extra_files)
      files.rmtree(out_dir)  # the old one goes only once the new one is built
    return out_dir
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp_root = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    builder = builder_class(name)(streams=splits, features=features, metadata=metadata,
                                  description=description, data_dir=tmp_root,
                                  file_format="array_record")
    t.disable_progress_bar()  # the caller shows one bar over its inputs
    # TFDS prints its "Downloading and preparing" banner to stdout; keep stdout for the caller's
    # results (tools print a JSON summary there).
    with contextlib.redirect_stdout(sys.stderr):
      builder.download_and_prepare(
          download_config=t.download.DownloadConfig(try_download_gcs=False))
    built = os.fspath(builder.data_dir)
    for file_name, make_text in (extra_files or {}).items():
      with open(os.path.join(built, file_name), "w", encoding="utf-8") as f:
        f.write(make_text())
    staged = tmp_root + ".done"
    os.rename(built, staged)
    if os.path.exists(out_dir):
      trash = tmp_root + ".old"
      os.rename(out_dir, trash)
      os.rename(staged, out_dir)
      shutil.rmtree(trash, ignore_errors=True)
    else:
      os.rename(staged, out_dir)
  finally:
    for leftover in (tmp_root, tmp_root + ".done"):
      shutil.rmtree(leftover, ignore_errors=True)
  return out_dir


def open_arrayrecord(path: str, *, what: str, how: str) -> dict[str, Any]:
  """split -> random-access source of a TFDS ArrayRecord folder; a clear error if it is not one."""
  if not files.isfile(files.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"{path}: not {what} (no dataset_info.json); {how}")
  # The ArrayRecord reader reads local files: a remote dataset is copied once per process.
  return dict(tfds().builder_from_directory(files.local_mirror(path)).as_data_source())


def dataset_metadata(path: str) -> dict[str, Any]:
  """metadata.json of a dataset folder ({} if absent)."""
  file = files.join(path, "metadata.json")
  if not files.isfile(file):
    return {}
  return json.loads(files.read_text(file))

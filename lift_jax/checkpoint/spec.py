"""A model's checkpoint spec, and the one load / save / export / convert that every model uses.

A model's `params.py` declares a `ModelSpec`: its kind (the converted checkpoint's tag and the
`convert_checkpoint --kind`), config and model classes, key table, the subfolder it sits in inside
a pipeline or VILA root, the upstream weight-file stem and the upstream keys it skips. Everything
else is written once here:

  spec.config(path, dtype=...)       the config of an upstream folder or a converted checkpoint
  spec.load(path, dtype=..., mesh=)  streamed through the table onto its shards (or restored)
  spec.save(model, dst)              a converted checkpoint (orbax + lift_jax.json), atomic
  spec.export(model, dst)            the upstream PyTorch layout (config.json + safetensors), atomic
  spec.convert(src, dst, dtype=)     upstream -> converted, streaming: never the whole model at once

A composite model (the VILA critic) subclasses the spec and overrides the hooks `upstream_config`,
`weights` and `write_extra`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from flax import nnx
from jax.sharding import Mesh

from lift_jax import files
from lift_jax.checkpoint import store
from lift_jax.checkpoint.safetensors import CheckpointError, WeightFolder, write_sharded
from lift_jax.checkpoint.tables import Rule, export_tensors, load_from_table, stream_from_table

DEFAULT_SHARD_BYTES = 5 * 1024**3


def component_folder(path: str, subfolder: str, *, vila: bool = False) -> str:
  """The component folder itself, or its `subfolder/` inside a pipeline or VILA root.

  A diffusers pipeline root has no config.json of its own; a VILA root has one holding `llm_cfg`.
  """
  nested = os.path.join(path, subfolder)
  if not os.path.isdir(nested) or store.is_converted(path):
    return path
  top = os.path.join(path, "config.json")
  if not os.path.isfile(top):
    return nested
  return nested if vila and "llm_cfg" in files.read_json(top, "a config") else path


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the loader needs to know about one model (see the module doc)."""

  kind: str
  config_class: type
  model_class: Callable[..., nnx.Module]  # (config, *, rngs) -> module
  rules: Callable[[Any], Sequence[Rule]]  # config -> key table
  subfolder: str  # the component's folder in a pipeline / VILA root
  name: str  # for messages: "the T5 encoder"
  parse: Callable[..., Any]  # (config dict, **runtime) -> config
  dump: Callable[[Any], dict]  # config -> config dict (config.json / lift_jax.json)
  weights_name: str = "model"  # upstream safetensors stem ("diffusion_pytorch_model" in diffusers)
  ignore: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()  # upstream keys not ported
  tensors: Callable[[str], Any] = WeightFolder  # component folder -> key view (renames, prefixes)
  vila_root: bool = False  # the root holding `subfolder/` is a VILA folder, not a pipeline
  options: tuple[str, ...] = ()  # load keywords that are not config fields (the critic's `lora`)

  # ---- hooks (overridden by composite models)

  def folder(self, path: str) -> str:
    """The upstream component folder at `path` (itself, or inside a pipeline / VILA root)."""
    if not os.path.isdir(path):
      raise CheckpointError(f"{path}: {self.name} folder does not exist")
    return component_folder(path, self.subfolder, vila=self.vila_root)

  def upstream_config(self, path: str, runtime: dict, options: dict) -> Any:
    where = os.path.join(self.folder(path), "config.json")
    return self.parse_config(files.read_json(where, f"{self.name}'s config.json"), runtime, where)

  def weights(self, path: str, config: Any, options: dict) -> Any:
    """The upstream tensors, under the names the key table uses."""
    return self.tensors(self.folder(path))

  def ignored(self, config: Any) -> tuple[str, ...]:
    return self.ignore(config) if callable(self.ignore) else tuple(self.ignore)

  def build(self, config: Any, path: str | None = None) -> nnx.Module:
    return self.model_class(config, rngs=nnx.Rngs(0))

  def write_extra(self, model: nnx.Module, folder: str) -> None:
    """Files a converted checkpoint carries besides the parameters (the critic's tokenizer)."""

  # ---- the one implementation

  def parse_config(self, config: dict, runtime: dict, where: str) -> Any:
    try:
      return self.parse(config, **runtime)
    except CheckpointError:
      raise
    except (TypeError, ValueError, KeyError) as err:
      raise CheckpointError(f"{where}: {err}") from err

  def _split(self, settings: dict) -> tuple[dict, dict]:
    options = {k: settings.pop(k) for k in self.options if k in settings}
    if settings.get("param_dtype") is None:
      settings["param_dtype"] = settings.get("dtype", "float32")
    return settings, options

  def config(self, path: str, **settings) -> Any:
    """The config of a converted checkpoint of this kind or of an upstream folder, with runtime
    settings (dtype, param_dtype, ...) applied; errors name the file."""
    runtime, options = self._split(dict(settings))
    if store.is_converted(path):
      meta = store.read_meta(path)
      if meta["kind"] != self.kind:
        raise CheckpointError(f"{path}: holds a {meta['kind']!r} checkpoint, not {self.kind!r}")
      return self.parse_config(self.converted_config(meta["config"], options), runtime,
                         os.path.join(path, store.META_FILE))
    return self.upstream_config(path, runtime, options)

  def converted_config(self, config: dict, options: dict) -> dict:
    return config

  def load(self, path: str, *, mesh: Mesh | None = None, progress: bool = False,
           **settings) -> nnx.Module:
    """A converted checkpoint restored onto its shards, or an upstream folder streamed through the
    key table (each tensor read once and placed straight onto its shards)."""
    cfg = self.config(path, **settings)
    _, options = self._split(dict(settings))
    make = lambda: self.build(cfg, path)
    if store.is_converted(path):
      return store.restore_model(path, make, mesh=mesh)
    return load_from_table(make, self.weights(path, cfg, options), self.rules(cfg), mesh=mesh,
                           ignore=self.ignored(cfg), progress=progress)

  def save(self, model: nnx.Module, dst: str, *, overwrite: bool = False) -> str:
    """Writes a converted checkpoint that `load` reads back (atomic)."""
    return store.save_model(dst, self.kind, self.dump(model.config), model, overwrite=overwrite,
                            extra=lambda tmp: self.write_extra(model, tmp))

  def export(self, model: nnx.Module, dst: str, *, prefix: str = "",
             max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> str:
    """Writes the upstream layout: config.json + `weights_name` safetensors shards (+ index), each
    key with `prefix`; atomic (temporary name, rename)."""
    tensors = ((prefix + key, value) for key, value in export_tensors(model, self.rules(model.config)))
    with files.atomic_directory(dst, overwrite=overwrite) as tmp:
      files.write_json(os.path.join(tmp, "config.json"), self.dump(model.config))
      write_sharded(tmp, tensors, weights_name=self.weights_name, max_shard_bytes=max_shard_bytes)
    return files.absolute(dst)

  def convert(self, src: str, dst: str, *, dtype: str = "float32", mesh: Mesh | None = None,
              overwrite: bool = False, progress: bool = False, **options) -> int:
    """Upstream folder -> converted checkpoint, streaming: each parameter goes from the safetensors
    onto its device shards and into the output in groups of ~512 MB. Returns the parameter count."""
    cfg = self.config(src, dtype=dtype, param_dtype=dtype, **options)
    _, opts = self._split(dict(options))
    abstract_model = nnx.eval_shape(lambda: self.build(cfg, src))
    abstract = nnx.state(abstract_model)
    count = [0]

    def arrays():
      for path, array in stream_from_table(abstract, self.weights(src, cfg, opts), self.rules(cfg),
                                           mesh=mesh, ignore=self.ignored(cfg), progress=progress):
        count[0] += array.size
        yield path, array

    store.save_streaming(dst, self.kind, self.dump(cfg), arrays(), overwrite=overwrite,
                         extra=lambda tmp: self.write_extra(abstract_model, tmp))
    return count[0]

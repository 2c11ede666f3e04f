"""How a model runs, apart from what it is: the runtime settings every model config carries, and
the one reader of an upstream config.json dict into a config dataclass.

A model config is a frozen dataclass of architecture fields (the upstream config.json names) that
inherits `RuntimeSettings` (or `DtypeSettings` for a model without attention or stacked layers):
`cfg.dtypes` gives the `dtype` / `param_dtype` keywords every layer takes, `cfg.architecture()` the
fields a checkpoint stores, `cfg.validate_runtime()` checks the settings.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Iterable

import jax.numpy as jnp

from lift_jax.layers.attention import IMPLEMENTATIONS
from lift_jax.layers.stack import REMAT_POLICIES

RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention_impl")


@dataclasses.dataclass(frozen=True)
class DtypeSettings:
  """Compute dtype and parameter dtype (not part of the checkpoint)."""

  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def dtypes(self) -> dict[str, Any]:
    """`dtype=` / `param_dtype=` keywords for the layers, as NumPy dtypes."""
    return dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))

  def architecture(self) -> dict[str, Any]:
    """The fields a checkpoint stores: every field but the runtime settings."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}

  def validate_runtime(self) -> None:
    """Nothing to check for dtypes alone (they are resolved when the layers are built)."""


@dataclasses.dataclass(frozen=True)
class RuntimeSettings(DtypeSettings):
  """Dtypes plus rematerialization of the stacked blocks and the attention implementation."""

  remat: str = "none"
  attention_impl: str = "auto"

  def validate_runtime(self) -> None:
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
    if self.attention_impl not in IMPLEMENTATIONS:
      raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of "
                       f"{IMPLEMENTATIONS}")


def config_fields(config: dict[str, Any], *, what: str, required: Iterable[str] = (),
                  defaults: dict[str, Any] | None = None, config_class: type | None = None,
                  fixed: dict[str, Any] | None = None, ignored: Iterable[str] = (),
                  unknown: str = "warn") -> dict:
  """The constructor keywords of a config dataclass, read from an upstream config.json dict.

  Every `required` key must be present ("not a(n) {what} config: missing [...]"). With `defaults`,
  those keys are read with the upstream library's defaults (which differ from the presets');
  without, every architecture field of `config_class` present in the dict is read, and any other
  key that is neither `fixed` (must hold that one value) nor `ignored` is warned about
  (`unknown="warn"`) or refused (`"raise"`). Lists become tuples (frozen dataclasses hold tuples).
  """
  missing = [k for k in required if k not in config]
  if missing:
    article = "an" if what[0] in "AEIOU" else "a"
    raise ValueError(f"not {article} {what} config: missing {missing}")
  for key, value in (fixed or {}).items():
    if key in config and config[key] != value:
      raise ValueError(f"config field {key}={config[key]!r} is not supported ({what} uses "
                       f"{value!r})")
  if defaults is not None:
    kwargs = {k: config[k] for k in required}
    kwargs.update({k: config.get(k, default) for k, default in defaults.items()})
  else:
    fields = {f.name for f in dataclasses.fields(config_class)} - set(RUNTIME_FIELDS)
    kwargs = {k: v for k, v in config.items() if k in fields}
    extra = sorted(set(config) - fields - set(fixed or {}) - set(ignored))
    if extra and unknown == "raise":
      raise ValueError(f"{what} config: unknown fields {extra} (expected the fields of "
                       f"{config_class.__name__})")
    if extra:
      warnings.warn(f"ignoring unknown {what} config fields: {extra}")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def square(config: dict[str, Any], name: str, default: int) -> int:
  """An image or patch size given as one int or as equal [h, w] (only square ones are ported)."""
  value = config.get(name, default)
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"{name}={value}: only square images and patches are supported")
    value = value[0]
  return int(value)

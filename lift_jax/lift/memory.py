"""The memory plan: compile the train step ahead of time and check it fits before step one.

A run that would die of out-of-memory hours in is refused up front, with the numbers and what to
change. Per-device figures come from XLA's own `memory_analysis()` of the compiled step.
"""

from __future__ import annotations

import dataclasses
import os

import jax

GIB = 1024**3


@dataclasses.dataclass
class MemoryPlan:
  params_bytes: int          # trainable + frozen parameters, per device
  optimizer_bytes: int       # optimizer state, per device
  temp_bytes: int            # activations and temporaries, per device
  argument_bytes: int
  output_bytes: int
  capacity_bytes: int | None  # what the device offers (None: unknown)

  @property
  def total_bytes(self) -> int:
    # Donated state aliases its outputs, so arguments + temporaries is the peak.
    return self.argument_bytes + self.temp_bytes

  @property
  def fits(self) -> bool:
    return self.capacity_bytes is None or self.total_bytes <= 0.95 * self.capacity_bytes

  def report(self) -> str:
    cap = "unknown" if self.capacity_bytes is None else _size(self.capacity_bytes)
    return (f"memory plan (per device): parameters {_size(self.params_bytes)}, optimizer state "
            f"{_size(self.optimizer_bytes)}, activations/temporaries {_size(self.temp_bytes)}, "
            f"total {_size(self.total_bytes)} of {cap}")


def _size(n: int) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def device_capacity(device: jax.Device | None = None) -> int | None:
  """Bytes a device can hold: the allocator limit on GPU/TPU; host RAM / devices on CPU."""
  device = device or jax.local_devices()[0]
  override = os.environ.get("LIFT_JAX_DEVICE_MEMORY_GB")
  if override:
    return int(float(override) * GIB)
  try:
    stats = device.memory_stats()
  except Exception:
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    try:
      import psutil
      return int(psutil.virtual_memory().total / max(len(jax.local_devices()), 1))
    except ImportError:
      return None
  return None


def _per_device_bytes(tree) -> int:
  total = 0
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    n = 1
    for d in shape:
      n *= d
    total += n * x.dtype.itemsize
  return total


def plan(compiled, abstract_state, frozen, capacity: int | None = None) -> MemoryPlan:
  analysis = compiled.memory_analysis()
  return MemoryPlan(
      params_bytes=_per_device_bytes(abstract_state["params"]) + _per_device_bytes(frozen),
      optimizer_bytes=_per_device_bytes(abstract_state["opt_state"]),
      temp_bytes=int(analysis.temp_size_in_bytes),
      argument_bytes=int(analysis.argument_size_in_bytes),
      output_bytes=int(analysis.output_size_in_bytes),
      capacity_bytes=capacity if capacity is not None else device_capacity())


class DoesNotFit(RuntimeError):
  pass


def check_fits(p: MemoryPlan, *, remat: str, fsdp: int, batch_per_device: int) -> None:
  if p.fits:
    return
  hints = []
  if remat == "none":
    hints.append("turn on rematerialization (--config.model.remat=full)")
  hints.append(f"shard parameters and optimizer state over more devices (mesh fsdp={fsdp} now)")
  if batch_per_device > 1:
    hints.append(f"lower the per-device batch ({batch_per_device} now) and use gradient "
                 "accumulation (--config.accum_steps)")
  hints.append("train fewer parameters (--config.trainable=blocks)")
  raise DoesNotFit(f"the train step does not fit: {p.report()}. Try: " + "; ".join(hints) + ".")

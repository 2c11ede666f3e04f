"""What the device suite's sections share: the shapes plan, a result recorder and a timer.

Kept free of JAX and torch imports: a section process imports one framework only.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable

# Modules the suite must never pull in (data loading and video IO are not benchmarked here).
FORBIDDEN_IMPORTS = ("grain", "tensorflow", "tensorflow_datasets", "array_record", "av", "cv2",
                     "imageio", "tensorboardX")


def load_plan(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def _plain(x: Any) -> Any:
  """numpy scalars and other number-likes -> JSON numbers."""
  if hasattr(x, "item"):
    return x.item()
  return str(x)


class Recorder:
  """One section's results, rewritten to `path` after every entry, so a section stopped at its
  time cap still hands back what it finished."""

  def __init__(self, path: str):
    self.path = path
    self.results: dict[str, Any] = {}
    self.error: str | None = None
    self.status = "running"  # then "ok" or "error"; still "running" if it was stopped
    self.start = time.perf_counter()

  def put(self, key: str, value: Any) -> Any:
    self.results[key] = value
    self.flush()
    return value

  def flush(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"status": self.status, "wall_s": round(time.perf_counter() - self.start, 2),
                 "results": self.results, "error": self.error}, f, indent=1, default=_plain)
    os.replace(tmp, self.path)


def forbidden_modules(modules) -> list[str]:
  """Top-level packages from FORBIDDEN_IMPORTS among `modules` (e.g. sys.modules)."""
  return sorted({m.split(".")[0] for m in modules} & set(FORBIDDEN_IMPORTS))


def timed(fn: Callable[[], Any], reps: int, sync: Callable[[Any], Any]) -> list[float]:
  """Wall seconds of `reps` calls of `fn`, each waited for with `sync(result)`."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return times


def stats(times: list[float]) -> dict[str, Any]:
  return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
          "all_ms": [round(1e3 * t, 3) for t in times]}


def tflops(flops: float, seconds: float) -> float:
  return flops / seconds / 1e12


def attention_flops(shape, backward: bool) -> float:
  """Q·Kᵀ and P·V: 4·B·N·T²·H forward; the backward adds 2.5x (it recomputes Q·Kᵀ, as flash
  kernels do), the convention of FlashAttention's own benchmarks."""
  b, t, n, h = shape
  fwd = 4.0 * b * n * t * t * h
  return fwd * (3.5 if backward else 1.0)


def bytes_to_gib(n: int | None) -> float | None:
  return None if n is None else n / 1024**3

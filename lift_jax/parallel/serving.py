"""Serving a model for inference (the critic): replicas or tensor parallelism, bucketed lengths.

Decoding is a long loop of small steps, so sharding the weights over `fsdp` would all-gather every
weight for each generated token. A model that fits one device is therefore replicated on every
device, the batch split over `data`; one that does not (the 40B critic, ~80 GB in bf16) is split
over `tensor`, the smallest size that fits and divides the heads (and KV heads, vocabulary, MLP
width), and replicated over the rest. `plan_serving` picks the layout and its report is the memory
plan printed before scoring starts.

Prompt lengths are rounded up to quarter-octave buckets (`bucket_length`): at most four compiled
programs per doubling of the prompt length, at most 25% (or 63 tokens of) padding, whatever
the captions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
from flax import nnx

GIB = 1024**3
BUCKETS_PER_OCTAVE = 4


def bucket_length(n: int, minimum: int = 64) -> int:
  """The bucket for an `n`-token prompt: a multiple of 2^floor(log2 n) / 4 (at least `minimum`)."""
  if n <= minimum:
    return minimum
  step = max(minimum, 2 ** (n.bit_length() - 1) // BUCKETS_PER_OCTAVE)
  return -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class ServingPlan:
  axes: dict[str, int]  # mesh axes: data (replicas) x tensor
  param_bytes: int  # the whole model
  cache_bytes: int  # KV cache of one batch, all rows
  capacity_bytes: int | None  # one device (None: unknown)

  @property
  def per_device_bytes(self) -> int:
    return self.param_bytes // self.axes["tensor"] + self.cache_bytes // (
        self.axes["tensor"] * self.axes["data"])

  def report(self, what: str = "model") -> str:
    cap = "unknown" if self.capacity_bytes is None else f"{self.capacity_bytes / GIB:.1f} GiB"
    layout = (f"{self.axes['data']} data-parallel replica(s)" if self.axes["tensor"] == 1 else
              f"tensor parallel over {self.axes['tensor']} devices x {self.axes['data']} "
              f"replica(s)")
    return (f"{what} memory plan: {layout}; parameters {self.param_bytes / GIB:.2f} GiB, KV cache "
            f"{self.cache_bytes / GIB:.2f} GiB per batch; per device "
            f"{self.per_device_bytes / GIB:.2f} GiB of {cap}")


def plan_serving(param_bytes: int, *, num_devices: int, capacity_bytes: int | None,
                 divisible: Sequence[int], cache_bytes: int = 0,
                 headroom: float = 0.9) -> ServingPlan:
  """Replicas if the model fits one device, else the smallest fitting tensor-parallel size.

  `divisible`: sizes a tensor split must divide (heads, KV heads, vocabulary, MLP width).
  """
  for tensor in range(1, num_devices + 1):
    if num_devices % tensor or any(size % tensor for size in divisible):
      continue
    plan = ServingPlan({"data": num_devices // tensor, "tensor": tensor}, int(param_bytes),
                       int(cache_bytes), capacity_bytes)
    if capacity_bytes is None or plan.per_device_bytes <= headroom * capacity_bytes:
      return plan
  cap = "unknown" if capacity_bytes is None else f"{capacity_bytes / GIB:.1f} GiB"
  raise ValueError(f"{param_bytes / GIB:.1f} GiB of parameters (+{cache_bytes / GIB:.1f} GiB KV "
                   f"cache) do not fit {num_devices} device(s) of {cap} with any tensor-parallel "
                   f"size dividing {sorted(set(divisible))}; use more devices, a smaller "
                   f"batch_videos or max_new_tokens, or give --config.mesh with "
                   f"--config.parallelism=mesh")


def kv_cache_bytes(*, rows: int, tokens: int, layers: int, kv_heads: int, head_dim: int,
                   itemsize: int) -> int:
  """Keys and values of every layer for `rows` sequences of `tokens` tokens."""
  return 2 * layers * rows * tokens * kv_heads * head_dim * itemsize


def model_bytes(make_model: Callable[[], nnx.Module]) -> int:
  """Parameter bytes of `make_model()`, built abstractly (nothing allocated)."""
  state = nnx.state(nnx.eval_shape(make_model))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def plan_decoder(param_bytes: int, llm: Any, *, rows: int, tokens: int, itemsize: int,
                 num_devices: int, capacity_bytes: int | None) -> ServingPlan:
  """`plan_serving` for a model with a Llama-style decoder `llm` (its config: layers, heads, KV
  heads, head dim, vocabulary, MLP width) decoding `rows` sequences of up to `tokens` tokens."""
  cache = kv_cache_bytes(rows=rows, tokens=tokens, layers=llm.num_hidden_layers,
                         kv_heads=llm.num_key_value_heads, head_dim=llm.head_dim,
                         itemsize=itemsize)
  return plan_serving(param_bytes, num_devices=num_devices, capacity_bytes=capacity_bytes,
                      divisible=(llm.num_attention_heads, llm.num_key_value_heads,
                                 llm.vocab_size, llm.intermediate_size), cache_bytes=cache)


def whole_rows(batch: int, data: int, rows_per_item: int) -> int:
  """The smallest batch >= `batch` whose `batch * rows_per_item` rows split evenly over `data`
  replicas (the critic asks 3 questions per video)."""
  step = data // math.gcd(data, rows_per_item)
  return -(-batch // step) * step

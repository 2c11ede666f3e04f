"""grain pipelines over the prepared reward dataset: shard, shuffle, mix, sample latents, batch.

  ds = loaders.make_dataset("work/prepared", batch_size=8, seed=0, real_fraction=1/3)
  it = loaders.make_iterator(ds)
  batch = next(it)   # {"latents" [B,F,C,H,W] f32, "text_embeds" [B,226,4096], "reward" [B] f32,
                     #  "is_real" [B] bool, "all_good" [B] bool}

Per step the transform draws z = mean + exp(logvar/2)·ε and multiplies by the VAE scaling factor,
as LiFT's trainer does with `latent_dist.sample() * scaling_factor`, then permutes to the
transformer layout [F, C, H, W]. ε depends only on (seed, element index), where the element index
is the position in the one global stream, so a resumed run sees exactly the samples an
uninterrupted one would have.

Several hosts: every host builds the same global stream (shuffle and mix over all records) and
takes its rows of each global batch (host p of P: local batches p, p + P, ...), so the global
batches, and the training, do not depend on the number of hosts.

Resuming: the iterator is a `grain.DatasetIterator`; `it.get_state()` / `it.set_state(state)` is a
small JSON-able dict, and orbax saves it beside the train state (one file per process):

  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=grain.checkpoint.CheckpointSave(it)))
  mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                             data=grain.checkpoint.CheckpointRestore(it)))
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from lift_jax.data import generated

log = logging.getLogger(__name__)

BATCH_KEYS = ("latents", "text_embeds", "reward", "is_real", "all_good")


def _grain():
  import grain
  return grain


def host_shard(n: int, process_index: int, process_count: int) -> slice:
  """This host's contiguous block of n records; every host gets n // count (the rest is dropped),
  so all hosts run the same number of steps."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  per = n // process_count
  return slice(process_index * per, (process_index + 1) * per)


def _seed(*parts: int) -> int:
  """A 32-bit seed from a few integers (stable across runs and machines)."""
  return zlib.crc32(np.asarray(parts, np.int64).tobytes()) & 0x7FFFFFFF


class SampleLatents:
  """element index, stored example -> training example (latent draw, layout, weight fields).

  A class rather than a closure so grain can pickle it into worker processes.
  """

  def __init__(self, scaling_factor: float, seed: int, process_index: int,
               sample: bool = True, text_dtype: Any = None):
    self.scaling_factor = float(scaling_factor)
    self.seed, self.process_index = int(seed), int(process_index)
    self.sample, self.text_dtype = sample, text_dtype

  def noise(self, index: int, shape: Sequence[int]) -> np.ndarray:
    """ε for element `index` of this host's stream: a function of (seed, process, index) only."""
    rng = np.random.default_rng([self.seed, self.process_index, int(index)])
    return rng.standard_normal(tuple(shape), dtype=np.float32)

  def __call__(self, index: int, ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
    mean = np.asarray(ex["latent_mean"], np.float32)
    if self.sample:
      std = np.exp(0.5 * np.asarray(ex["latent_logvar"], np.float32))
      z = mean + std * self.noise(index, mean.shape)
    else:
      z = mean
    text = np.asarray(ex["text_embeds"])
    if self.text_dtype is not None:
      text = text.astype(self.text_dtype)
    return {
        "latents": (z * np.float32(self.scaling_factor)).transpose(1, 0, 2, 3),  # [C,F,..]->[F,C,..]
        "text_embeds": text,
        "reward": np.float32(ex["reward"]),
        "is_real": np.bool_(ex["is_real"]),
        "all_good": np.bool_(ex["all_good"]),
    }


def _sources(data) -> tuple[dict[str, Any], dict[str, Any]]:
  if isinstance(data, str):
    return generated.open_dataset(data), generated.dataset_metadata(data)
  if isinstance(data, Mapping):
    unknown = set(data) - {"synthetic", "real"}
    if unknown:
      raise ValueError(f"data splits {sorted(unknown)}: expected 'synthetic' and/or 'real'")
    return dict(data), {}
  raise TypeError(f"data must be a prepared dataset directory or {{split: source}}, got {type(data)}")


def make_dataset(data, *, batch_size: int, seed: int = 0, real_fraction: float | None = None,
                 num_epochs: int | None = None, process_index: int | None = None,
                 process_count: int | None = None, scaling_factor: float | None = None,
                 sample: bool = True, text_dtype: Any = None, drop_remainder: bool = True):
  """The per-host training pipeline as a `grain.MapDataset` of batches.

  data: a prepared dataset directory (`generated.prepare_reward_dataset`) or a mapping
    {"synthetic": source, "real": source} of random-access sources (e.g. lists of example dicts).
  batch_size: per host. seed: shuffling and latent noise.
  real_fraction: share of real videos in the stream. None mixes in proportion to the split sizes
    (LiFT concatenates the two sets and shuffles); 0 uses synthetic data only, 1 real only.
    The splits are interleaved deterministically in that ratio, each shuffled on its own.
  num_epochs: passes over the synthetic split (real data repeats as needed when real_fraction is
    set; with real_fraction None both make num_epochs passes); None repeats forever.
  process_index / process_count: this host's rows of every global batch of batch_size x
    process_count (default: jax.process_index()/process_count()).
  scaling_factor: the VAE's (default: the dataset's metadata.json; required for in-memory data).
  sample: draw z from the posterior (True) or use the mean.
  """
  grain = _grain()
  sources, meta = _sources(data)
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  if scaling_factor is None:
    if "scaling_factor" not in meta:
      raise ValueError("scaling_factor is not in the dataset's metadata.json; pass scaling_factor "
                       "(1.15258426 for CogVideoX-2B, 0.7 for 5B)")
    scaling_factor = meta["scaling_factor"]
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if real_fraction is not None and not 0.0 <= real_fraction <= 1.0:
    raise ValueError(f"real_fraction must be in [0, 1] or None, got {real_fraction}")

  parts, weights = [], []
  for i, split in enumerate(("synthetic", "real")):
    src = sources.get(split)
    n = 0 if src is None else len(src)
    share = None if real_fraction is None else (real_fraction if split == "real"
                                                else 1.0 - real_fraction)
    if share == 0.0:
      continue
    if n == 0:
      if share is not None:
        raise ValueError(f"real_fraction={real_fraction} asks for {split} data, but the "
                         f"{split} split has 0 records")
      continue
    ds = grain.MapDataset.source(src).shuffle(seed=_seed(seed, i))
    epochs = None if (split == "real" and real_fraction is not None) else num_epochs
    parts.append(ds.repeat(epochs))
    weights.append(n if share is None else share)
  if not parts:
    raise ValueError("no data: both splits are empty (or too small for the number of hosts)")
  mixed = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
  mixed = mixed.map_with_index(SampleLatents(scaling_factor, seed, 0, sample, text_dtype))
  local = mixed.batch(batch_size, drop_remainder=drop_remainder)
  if process_count == 1:
    return local
  if steps_per_epoch(local) is not None:  # every host the same number of steps
    local = local[:len(local) - len(local) % process_count]
  return local[process_index::process_count]


def make_iterator(dataset, *, num_threads: int = 2, prefetch: int = 2, worker_count: int = 0,
                  worker_buffer_size: int = 1):
  """A checkpointable iterator over `make_dataset`'s batches (`get_state` / `set_state`).

  `prefetch` counts batches (each a few hundred MB at CogVideoX size), so keep it small.
  worker_count > 0 decodes in that many processes (`mp_prefetch`); the state still round-trips.
  """
  grain = _grain()
  it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                    prefetch_buffer_size=prefetch))
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags (defaults are fine)
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter(it_ds)


def checkpoint_args(iterator, *, restore: bool = False):
  """The orbax `CheckpointArgs` that save (or restore into) a grain iterator; put it in a
  `ocp.args.Composite` beside the train state (see the module docstring)."""
  import grain.checkpoint as grain_ckpt
  return grain_ckpt.CheckpointRestore(iterator) if restore else grain_ckpt.CheckpointSave(iterator)


def steps_per_epoch(dataset) -> int | None:
  """Number of batches of a finite `make_dataset` pipeline (None when it repeats forever)."""
  n = len(dataset)
  return None if n >= 2**40 else n  # an infinite MapDataset reports ~sys.maxsize // batch_size

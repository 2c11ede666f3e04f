"""Multi-process start-up and agreement: `jax.distributed.initialize()` whenever the job is one of
several processes, and the few collectives every stage needs (a barrier, "did any host ask to
stop?", which items are this host's).

A job is multi-process when
  * JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set (any cluster; all three,
    a partial set is an error naming what is missing),
  * SLURM started several tasks (SLURM_NTASKS > 1), or Open MPI several ranks
    (OMPI_COMM_WORLD_SIZE > 1): JAX's own detection reads the rest,
  * it runs on a Cloud TPU VM (TPU_WORKER_HOSTNAMES, MEGASCALE_COORDINATOR_ADDRESS, GKE, or the
    GCE TPU metadata): JAX asks the metadata server for the coordinator; a one-host slice comes
    back as one process.
LIFT_JAX_DISTRIBUTED=0 turns it off; =1 calls `jax.distributed.initialize()` with JAX's own
detection (for clusters the rules above miss).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence, TypeVar

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # the coordination client (no public API)
from jax.experimental import multihost_utils

T = TypeVar("T")
EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedSetupError(RuntimeError):
  """A multi-process setting is present but cannot be resolved; the message names what's missing."""


def _on_cloud_tpu_vm() -> bool:
  """JAX's own test for a Cloud TPU VM (GCE metadata); False when JAX's internals moved."""
  try:
    from jax._src import clusters
    return bool(clusters.GceTpuCluster.is_env_present())
  except Exception:  # noqa: BLE001 - private API: absent means "not detected", never a crash
    return False


def plan(env: Mapping[str, str] | None = None, tpu_vm: bool | None = None) -> dict | None:
  """How to call `jax.distributed.initialize` for this environment: its keyword arguments, or
  None for a single process. Raises DistributedSetupError naming a missing variable."""
  env = os.environ if env is None else env
  switch = env.get("LIFT_JAX_DISTRIBUTED", "").strip().lower()
  if switch in ("0", "false", "no", "off"):
    return None
  given = [k for k in EXPLICIT if env.get(k)]
  if given:
    missing = [k for k in EXPLICIT if not env.get(k)]
    if missing:
      raise DistributedSetupError(
          f"multi-process setting incomplete: {', '.join(given)} set but {', '.join(missing)} "
          f"missing (set all of {', '.join(EXPLICIT)}, or none for auto-detection)")
    try:
      num, pid = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
    except ValueError as err:
      raise DistributedSetupError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers: {err}")
    if not 0 <= pid < num:
      raise DistributedSetupError(f"JAX_PROCESS_ID={pid} outside [0, JAX_NUM_PROCESSES={num})")
    return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": num,
            "process_id": pid}
  if switch in ("1", "true", "yes", "on"):
    return {}
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if env.get(var, "1").isdigit() and int(env.get(var, "1")) > 1:
      return {}
  if env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return {}
  if tpu_vm is None:
    tpu_vm = env.get("JAX_PLATFORMS", "").strip() in ("", "tpu") and _on_cloud_tpu_vm()
  return {} if tpu_vm else None


def process_index_from_env(env: Mapping[str, str] | None = None) -> int:
  """This process's index as the launcher's environment states it (JAX_PROCESS_ID, SLURM_PROCID,
  OMPI_COMM_WORLD_RANK, TPU_WORKER_ID / CLOUD_TPU_TASK_ID), without starting jax.distributed:
  for a parent process (the loop runner) that only starts the stages' jobs. 0 when none is set."""
  env = os.environ if env is None else env
  for var in ("JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TPU_WORKER_ID",
              "CLOUD_TPU_TASK_ID"):
    value = env.get(var, "").strip()
    if value.isdigit():
      return int(value)
  return 0


def initialize() -> None:
  """`jax.distributed.initialize()` once, when the job is multi-process (see the module doc)."""
  if jax.distributed.is_initialized():
    return
  kwargs = plan()
  if kwargs is None:
    return
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as err:  # JAX could not find the coordinator, process count or id
    raise DistributedSetupError(
        f"jax.distributed.initialize() failed: {err}. Set {', '.join(EXPLICIT)} explicitly "
        f"(or LIFT_JAX_DISTRIBUTED=0 for a single process)") from err
  _orbax_barriers_in_coordination_service()


def _orbax_barriers_in_coordination_service() -> None:
  """orbax's own barriers (checkpoint directory creation, the commit of an async save) default to
  a device collective, which its background commit thread runs while the training steps run
  theirs: on CPU the two programs' gloo messages can interleave differently on each host. Its
  flag `experimental_orbax_use_distributed_barrier` moves them to the coordination service, as
  `barrier` here (it takes effect once absl has parsed the flags, as every stage's CLI does)."""
  import orbax.checkpoint  # noqa: F401  (heavy; defines the flag)
  from absl import flags
  name = "experimental_orbax_use_distributed_barrier"
  if name in flags.FLAGS:
    flags.FLAGS[name].value = True


_ANY_CALLS = 0


def any_process(flag: bool, timeout_s: float = 3600.0) -> bool:
  """True on every process when `flag` is True on any of them (call it at the same point on every
  process).

  Agreed through the coordination service's key-value store, not a device collective: the train
  loop asks every step, and a host-side collective there would interleave with the step's own
  collectives still running asynchronously (on CPU, gloo then sees mismatched messages).
  """
  global _ANY_CALLS
  if jax.process_count() == 1:
    return bool(flag)
  client = jax_distributed.global_state.client
  if client is None:  # started without jax.distributed: a device collective is all there is
    flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32))
    return bool(np.asarray(flags).any())
  n, _ANY_CALLS = _ANY_CALLS, _ANY_CALLS + 1
  key = f"lift_jax:any:{n}"
  client.key_value_set(f"{key}:{jax.process_index()}", "1" if flag else "0")
  timeout_ms = int(timeout_s * 1000)
  client.wait_at_barrier(key, timeout_ms)
  found = [client.blocking_key_value_get(f"{key}:{i}", timeout_ms)
           for i in range(jax.process_count())]
  return "1" in found


def host_array(x) -> np.ndarray:
  """The whole value of `x` on this process, also when it is sharded over several hosts (then a
  collective: every process calls it for the same arrays in the same order)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


_BARRIER_CALLS: dict[str, int] = {}


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """All processes reach this point before any goes on (no-op for one process).

  Waits in the coordination service, not in a device collective: one host may be busy for many
  minutes (process 0 building a dataset) while the others wait, longer than a collective's
  start-up allows (gloo on CPU gives up after 30 s). Every process calls the same barriers in the
  same order, so the n-th call of a name is the same barrier everywhere.
  """
  if jax.process_count() == 1:
    return
  client = jax_distributed.global_state.client
  if client is None:  # started without jax.distributed (e.g. a single multi-device TPU VM)
    multihost_utils.sync_global_devices(name)
    return
  n = _BARRIER_CALLS[name] = _BARRIER_CALLS.get(name, -1) + 1
  client.wait_at_barrier(f"lift_jax:{name}:{n}", int(timeout_s * 1000))


def process_share(items: Sequence[T], index: int | None = None,
                  count: int | None = None) -> list[T]:
  """This process's items: every `count`-th from its index (items[i] goes to process i % count),
  so the split is deterministic and hosts get even shares."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return list(items[index::count])

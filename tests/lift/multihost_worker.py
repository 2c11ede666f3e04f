"""One process of a 2-process CPU training run (jax.distributed + gloo), for test_multihost.py.

  python -m tests.lift.multihost_worker PROCESS_ID PORT OUT.npz
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lift_jax import parallel  # noqa: E402


def main() -> None:
  process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(process_id))
  parallel.initialize_distributed()
  assert jax.process_count() == 2 and jax.device_count() == 4
  from jax.experimental import multihost_utils

  from tests.lift.test_train import batches, trainer_on

  tr = trainer_on({"data": 2, "fsdp": 2})
  state = tr.init_state()
  for batch in batches():
    rows = sorted({idx[0].start or 0 for idx in tr.batch_sharding.addressable_devices_indices_map(
        batch["latents"].shape).values()})
    per_device = batch["latents"].shape[0] // jax.device_count()
    local = {k: np.concatenate([v[r:r + per_device] for r in rows]) for k, v in batch.items()}
    state, _ = tr.step(state, local)
  params = multihost_utils.process_allgather(state["params"], tiled=True)
  if process_id == 0:
    leaves = jax.tree.leaves(params)
    np.savez(out, *[np.asarray(x) for x in leaves])
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()

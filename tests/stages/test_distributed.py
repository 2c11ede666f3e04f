"""When a job starts jax.distributed, and the messages when a multi-host setting is incomplete."""

import pytest

from lift_jax.parallel import distributed


def test_single_process_needs_nothing():
  assert distributed.plan({}, tpu_vm=False) is None
  assert distributed.plan({"SLURM_NTASKS": "1"}, tpu_vm=False) is None


def test_explicit_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert distributed.plan(env, tpu_vm=False) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  assert distributed.process_index_from_env(env) == 3


@pytest.mark.parametrize("env, named", [
    ({"JAX_PROCESS_ID": "1"}, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES missing"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID missing"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "outside [0, JAX_NUM_PROCESSES=2)"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "must be integers"),
])
def test_incomplete_setting_names_what_is_missing(env, named):
  with pytest.raises(distributed.DistributedSetupError) as err:
    distributed.plan(env, tpu_vm=False)
  assert named in str(err.value)


def test_auto_detected_clusters_use_jax_detection():
  for env in ({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}, {"OMPI_COMM_WORLD_SIZE": "2"},
              {"TPU_WORKER_HOSTNAMES": "t0,t1"}, {"MEGASCALE_COORDINATOR_ADDRESS": "c:8080"}):
    assert distributed.plan(env, tpu_vm=False) == {}, env
  assert distributed.plan({}, tpu_vm=True) == {}  # a Cloud TPU VM (GCE metadata), any size
  assert distributed.process_index_from_env({"SLURM_PROCID": "5"}) == 5


def test_switch_overrides_detection():
  assert distributed.plan({"LIFT_JAX_DISTRIBUTED": "0", "SLURM_NTASKS": "8"}, tpu_vm=True) is None
  assert distributed.plan({"LIFT_JAX_DISTRIBUTED": "1"}, tpu_vm=False) == {}


def test_process_share_is_by_global_index():
  items = list(range(7))
  shares = [distributed.process_share(items, i, 3) for i in range(3)]
  assert shares == [[0, 3, 6], [1, 4], [2, 5]]
  assert distributed.process_share(items) == items  # one process: everything

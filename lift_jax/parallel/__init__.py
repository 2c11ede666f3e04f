"""Meshes, logical axis rules and multi-host start-up."""

from lift_jax.parallel.mesh import (DEFAULT_RULES, MESH_AXES, active_mesh, check_divisible,
                                    constrain, logical_to_spec, make_mesh, mesh_from_config,
                                    param_shardings, resolve_axis_sizes, use_mesh)
from lift_jax.parallel.distributed import (DistributedSetupError, any_process, barrier,
                                           process_share)
from lift_jax.parallel.distributed import initialize as initialize_distributed

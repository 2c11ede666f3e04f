"""Meshes, logical axis rules and multi-host start-up."""

from lift_jax.parallel.mesh import (DEFAULT_RULES, MESH_AXES, active_mesh, check_divisible,
                                    constrain, initialize_distributed, logical_to_spec, make_mesh,
                                    param_shardings, resolve_axis_sizes, use_mesh)

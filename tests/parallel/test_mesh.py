"""Mesh construction and the early, named failures for layouts that cannot work."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lift_jax import layers, parallel


def test_minus_one_takes_the_rest():
  assert parallel.resolve_axis_sizes({"data": 2, "fsdp": -1}, 8) == {
      "data": 2, "fsdp": 4, "tensor": 1, "context": 1}
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": -1})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2, "context": 1}


@pytest.mark.parametrize("axes,message", [
    ({"data": -1, "fsdp": -1}, "at most one mesh axis may be -1"),
    ({"data": 3, "fsdp": -1}, "do not divide the 8 devices"),
    ({"data": 2, "fsdp": 2}, "multiply to 4, but there are 8 devices"),
    ({"model": 8}, "unknown mesh axes"),
])
def test_bad_mesh_configs_are_named(axes, message):
  with pytest.raises(ValueError, match=message):
    parallel.resolve_axis_sizes(axes, 8)


def test_divisibility_names_every_offending_pair():
  mesh = parallel.make_mesh({"data": 2, "tensor": 4})
  with pytest.raises(ValueError) as err:
    parallel.check_divisible(mesh, heads=30, batch=3, tokens=17776)
  text = str(err.value)
  assert "heads=30 is not divisible by mesh axis tensor=4" in text
  assert "batch=3 is not divisible by mesh axis data×fsdp=2" in text
  parallel.check_divisible(mesh, heads=48, batch=4)  # CogVideoX-5B fits


def test_logical_rules_map_to_mesh_axes():
  assert parallel.logical_to_spec(("layers", "embed", "heads", "kv")) == P(None, "fsdp", "tensor", None)
  assert parallel.logical_to_spec(("activation_batch", "activation_length")) == P(("data", "fsdp"),
                                                                                   "context")
  # A mesh axis is used once: the second 'embed' stays replicated.
  assert parallel.logical_to_spec(("embed", "embed")) == P("fsdp", None)


def test_param_shardings_name_parameters_that_do_not_fit():
  mesh = parallel.make_mesh({"fsdp": 8})
  model = nnx.eval_shape(lambda: layers.Dense(12, 16, axes=("embed", "mlp"), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"kernel: dim 12 not divisible by mesh axis fsdp \(size 8\)"):
    parallel.param_shardings(nnx.state(model), mesh)


def test_constrain_is_a_noop_without_mesh_and_shards_with_one():
  x = jnp.ones((8, 4))
  assert parallel.constrain(x, ("activation_batch", None)) is x
  mesh = parallel.make_mesh({"data": 8})
  with parallel.use_mesh(mesh):
    y = jax.jit(lambda a: parallel.constrain(a * 2, ("activation_batch", None)))(x)
  assert y.sharding.spec == P(("data", "fsdp"), None) or y.sharding.spec[0] in ("data", ("data", "fsdp"))

"""Remat policies by name: each keeps what it names (checkpoint_name); none changes gradients."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals

from lift_jax import layers
from lift_jax.layers.remat import REMAT_POLICIES
from lift_jax.lift import throughput
from tests.reference import rel_err


class _Block(nnx.Module):
  """x + out(attention(qkv(x))): the shape of every transformer block's attention half."""

  def __init__(self, rngs):
    self.qkv = layers.Dense(8, (3, 2, 4), axes=(None, None, None, None), rngs=rngs)
    self.out = layers.Dense((2, 4), 8, axes=(None, None, None), rngs=rngs)

  def __call__(self, x):
    qkv = self.qkv(x)
    return x + self.out(layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], impl="xla"))


def _loss(stack, remat):
  stack.remat = remat  # the same weights under each policy (building a stack is the slow part)
  graphdef, state = nnx.split(stack)
  return (lambda s, x: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x)))), state


def test_policies_keep_their_names_and_leave_gradients_unchanged():
  """Counts the [layers, B, T, N, H] tensors each scan keeps for the backward pass (attention's
  inputs and output have that shape; names do not survive the scan, shapes do); all policies'
  gradients in one compiled program equal the no-remat ones."""
  expected = {"none": None, "full": 0, "dots": 0, "attention": 1, "qkv": 3, "qkv_attention": 4,
              "dots_attention": 1}
  assert set(expected) == set(REMAT_POLICIES) == set(throughput.REMAT_RECOMPUTE)
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  stack = layers.StackedBlocks(_Block, 2, rngs=nnx.Rngs(0))
  losses = {name: _loss(stack, name) for name in expected}
  for name, kept in expected.items():
    loss, state = losses[name]
    if kept is not None:
      count = sum(a.shape == (2, 2, 5, 2, 4) for a, _ in saved_residuals(loss, state, x))
      assert count == kept, name
  grads = jax.jit(lambda x: {n: jax.grad(loss)(state, x) for n, (loss, state) in losses.items()})(x)
  for name in expected:
    for g, g_ref in zip(jax.tree.leaves(grads[name]), jax.tree.leaves(grads["none"])):
      assert rel_err(g, g_ref) <= 1e-6, name


def test_unknown_policy_lists_the_known_ones():
  with pytest.raises(ValueError, match="remat must be one of .*qkv_attention"):
    layers.StackedBlocks(_Block, 1, remat="offload", rngs=nnx.Rngs(0))

"""Remat policies by name: each keeps what it says (by checkpoint_name) and none changes gradients."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals

from lift_jax import layers
from lift_jax.layers.remat import REMAT_POLICIES
from tests.reference import rel_err


class _Block(nnx.Module):
  """x + out(attention(qkv(x))): the shape of every transformer block's attention half."""

  def __init__(self, rngs):
    self.qkv = layers.Dense(8, (3, 2, 4), axes=(None, None, None, None), rngs=rngs)
    self.out = layers.Dense((2, 4), 8, axes=(None, None, None), rngs=rngs)

  def __call__(self, x):
    qkv = self.qkv(x)
    return x + self.out(layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], impl="xla"))


def _kept_head_tensors(remat):
  """How many [layers, B, T, N, H] tensors the scan keeps for the backward pass (the attention
  inputs and output have that shape; names do not survive the scan, shapes do), and the grads."""
  stack = layers.StackedBlocks(_Block, 2, remat=remat, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(stack)
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  loss = lambda s, x: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x)))
  kept = sum(a.shape == (2, 2, 5, 2, 4) for a, _ in saved_residuals(loss, state, x))
  return kept, jax.grad(loss)(state, x)


def test_policies_keep_their_names_and_leave_gradients_unchanged():
  _, reference = _kept_head_tensors("none")
  expected = {"full": 0, "dots": 0, "attention": 1, "qkv": 3, "qkv_attention": 4,
              "dots_attention": 1}
  assert set(expected) | {"none"} == set(REMAT_POLICIES)
  for name, kept in expected.items():
    count, grads = _kept_head_tensors(name)
    assert count == kept, name
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
      assert rel_err(g, g_ref) <= 1e-6, name


def test_unknown_policy_lists_the_known_ones():
  with pytest.raises(ValueError, match="remat must be one of .*qkv_attention"):
    layers.StackedBlocks(_Block, 1, remat="offload", rngs=nnx.Rngs(0))

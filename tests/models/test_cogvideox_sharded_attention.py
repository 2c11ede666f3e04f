"""The whole CogVideoX transformer through the sharded attention paths equals the plain XLA path.

Forward and parameter gradients on 8 fake CPU devices: splash (Pallas interpret mode) inside
shard_map with heads over tensor and batch over fsdp, and context parallelism (2 and 4) with a token
count that needs padding. The model is randomly initialised (torch-initialised Dense layers, so no
block is a no-op); the reference is the same weights with `attention_impl="xla"` and no mesh.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lift_jax import layers, parallel
from lift_jax.models import cogvideox
from tests.reference import rel_err

# 4 heads of 16 (3D RoPE), 2 layers; 7 text + 2x3x3 video tokens = 25 tokens (odd: padding needed).
TINY = dict(num_attention_heads=4, attention_head_dim=16, num_layers=2, text_embed_dim=24,
            time_embed_dim=32, in_channels=4, out_channels=4, max_text_seq_length=7,
            sample_height=6, sample_width=6, sample_frames=9,
            use_rotary_positional_embeddings=True)


def _inputs(batch=4):
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (batch, 2, 4, 6, 6)),
          jax.random.normal(keys[1], (batch, 7, 24)),
          jax.random.uniform(keys[2], (batch,), maxval=999.0))


def _forward_and_grads(impl, mesh=None):
  cfg = cogvideox.CogVideoXConfig(**TINY, attention_impl=impl)
  model = cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0))
  latents, text, t = _inputs()
  weight = jnp.sin(jnp.arange(latents.size, dtype=jnp.float32)).reshape(latents.shape)

  def loss(m, x, s, ts):
    out = m(x, s, ts)
    return jnp.sum(out * weight), out

  step = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
  if mesh is None:
    (_, out), grads = step(model, latents, text, t)
  else:
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, parallel.param_shardings(state, mesh)))
    batch = jax.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with parallel.use_mesh(mesh):
      (_, out), grads = step(model, jax.device_put(latents, batch), text, t)
  return np.asarray(out), jax.tree.map(np.asarray, nnx.to_pure_dict(grads))


@pytest.fixture(scope="module")
def reference():
  return _forward_and_grads("xla")


def _assert_matches(got, want, tol=1e-5):
  out, grads = got
  assert rel_err(out, want[0]) <= tol
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(want[1])[0])
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert rel_err(g, flat_ref[path]) <= tol, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_transformer_through_splash_in_shard_map(reference):
  mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
  with layers.attention_settings(interpret=True, block_q=128, block_kv=128), \
      warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)  # a fallback to xla would warn
    _assert_matches(_forward_and_grads("splash", mesh), reference)


@pytest.mark.slow
@pytest.mark.parametrize("context", [2, 4])
def test_transformer_with_context_parallelism(reference, context):
  mesh = parallel.make_mesh({"fsdp": 8 // context, "context": context})
  _assert_matches(_forward_and_grads("xla", mesh), reference)

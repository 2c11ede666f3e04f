"""`profile_steps` in the train loop writes a jax.profiler trace of the steps after the first."""

import glob

import jax
import jax.numpy as jnp

from lift_jax.lift import loop


class _CountingTrainer:
  """The one method `fit` calls: step(state, batch) -> (state, metrics)."""

  def __init__(self):
    self._step = jax.jit(lambda s, x: ({"step": s["step"] + 1, "bad_steps": s["bad_steps"]},
                                       {"loss": jnp.sum(x), "grad_norm": jnp.float32(0)}))

  def step(self, state, batch):
    return self._step(state, batch)


def test_profile_steps_writes_a_trace(tmp_path):
  state = {"step": jnp.int32(0), "bad_steps": jnp.int32(0)}
  data = iter([jnp.ones(4)] * 5)
  state = loop.fit(_CountingTrainer(), state, data, num_steps=5, log_every=1, progress=False,
                   profile_steps=2, profile_dir=str(tmp_path / "profile"))
  assert int(state["step"]) == 5
  assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))

"""The train loop's log step: wall-clock throughput between logged steps, and `profile_steps`
(a jax.profiler trace of the steps after the first)."""

import glob
import time

import jax
import jax.numpy as jnp
import pytest

from lift_jax.lift import loop, throughput
from lift_jax.models import cogvideox


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


class _SleepingTrainer(_CountingTrainer):
  """Each step takes `seconds` of wall time on the host after dispatch (device work is tiny)."""

  def __init__(self, seconds):
    super().__init__()
    self.seconds = seconds

  def step(self, state, batch):
    time.sleep(self.seconds)
    return super().step(state, batch)


def test_logged_throughput_is_wall_time_between_logged_steps():
  cfg = cogvideox.CogVideoXConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                  text_embed_dim=24, time_embed_dim=32)
  flops = throughput.train_step_flops(cfg, (4, 2, 16, 8, 8), text_len=6)
  history = []
  state = {"step": jnp.int32(0), "bad_steps": jnp.int32(0)}
  loop.fit(_SleepingTrainer(0.05), state, iter([jnp.ones(4)] * 6), num_steps=6, log_every=2,
           progress=False, step_flops=flops, history=history)
  assert [h["step"] for h in history] == [2, 4, 6]
  assert "step_time_s" not in history[0]  # the first interval holds the compile
  for h in history[1:]:
    assert 0.05 <= h["step_time_s"] < 0.5
    assert h["tokens_per_s"] == pytest.approx(flops.tokens / h["step_time_s"])
    assert "mfu" not in h  # no bf16 peak is known for a CPU

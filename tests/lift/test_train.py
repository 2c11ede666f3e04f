"""The train step and loop: sharding invariance, non-finite steps, resume (other mesh, kill -9,
SIGTERM), the memory plan."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lift_jax import parallel
from lift_jax.checkpoint.manager import TrainCheckpointer
from lift_jax.lift import loop, memory, train
from lift_jax.models import cogvideox
from tests.lift import tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = cogvideox.CogVideoXConfig.from_diffusers_config(tiny_run.TRANSFORMER)


def batches(n=3, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return [dict(latents=rng.normal(size=(size, 2, 16, 8, 8)).astype(np.float32),
               text_embeds=rng.normal(size=(size, 6, 16)).astype(np.float32),
               reward=rng.choice([0.05, 0.2, 0.9], size).astype(np.float32),
               is_real=np.arange(size) % 4 == 3, all_good=np.arange(size) % 4 == 3)
          for _ in range(n)]


def trainer_on(axes, devices=None):
  mesh = parallel.make_mesh(axes, devices)
  model = cogvideox.CogVideoXTransformer3D(CFG, rngs=nnx.Rngs(0))
  return train.Trainer(model, mesh=mesh, trainable="full",
                       optim=train.OptimConfig(lr=1e-3, warmup_steps=1, total_steps=10))


def host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(host(a), host(b)))


def run_steps(tr, data, state=None):
  state = tr.init_state() if state is None else state
  for b in data:
    state, metrics = tr.step(state, b)
  return state, metrics


def test_sharded_steps_equal_single_device():
  data = batches()
  single, _ = run_steps(trainer_on({"data": 1}, jax.devices()[:1]), data)
  for axes in ({"data": 2, "fsdp": 4}, {"data": 2, "fsdp": 2, "tensor": 2}):
    state, _ = run_steps(trainer_on(axes), data)
    assert max_diff(state["params"], single["params"]) <= 1e-5, axes


def test_non_finite_batch_is_skipped_and_counted():
  tr = trainer_on({"data": 1}, jax.devices()[:1])
  data = batches(2)
  state, _ = run_steps(tr, data[:1])
  before = host(state["params"])
  poisoned = dict(data[1], latents=data[1]["latents"].copy())
  poisoned["latents"][0, 0, 0, 0, 0] = np.nan
  state, metrics = tr.step(state, poisoned)
  assert not bool(metrics["finite"])
  assert int(state["bad_steps"]) == 1 and int(state["step"]) == 2
  for x, y in zip(before, host(state["params"])):
    np.testing.assert_array_equal(x, y)
  state, metrics = tr.step(state, data[1])  # training goes on
  assert bool(metrics["finite"]) and int(state["bad_steps"]) == 1


def test_checkpoint_from_8_devices_resumes_on_4(tmp_path):
  data = batches()
  single, _ = run_steps(trainer_on({"data": 1}, jax.devices()[:1]), data)
  first = trainer_on({"fsdp": 8})
  state, _ = run_steps(first, data[:2])
  ckpt = TrainCheckpointer(str(tmp_path / "ckpt"))
  ckpt.save(2, state)
  ckpt.close()
  second = trainer_on({"data": 2, "fsdp": 2}, jax.devices()[:4])
  restored = TrainCheckpointer(str(tmp_path / "ckpt")).restore(second.abstract_state())
  leaf = jax.tree.leaves(restored["params"])[0]
  assert len(leaf.sharding.device_set) == 4
  state, _ = run_steps(second, data[2:], restored)
  assert int(state["step"]) == 3
  assert max_diff(state["params"], single["params"]) <= 1e-5


def test_memory_plan_is_reported_and_refuses_what_does_not_fit():
  tr = trainer_on({"data": 1}, jax.devices()[:1])
  compiled = tr.lower(train.batch_spec(8, 2, 16, 8, 8, 6, 16)).compile()
  plan = memory.plan(compiled, tr.abstract_state(), tr.frozen)
  assert plan.params_bytes > 0 and plan.optimizer_bytes >= 2 * plan.params_bytes * 0.9
  assert "memory plan (per device)" in plan.report()
  memory.check_fits(plan, remat="none", fsdp=1, batch_per_device=8)
  tiny = memory.plan(compiled, tr.abstract_state(), tr.frozen, capacity=1024)
  with pytest.raises(memory.DoesNotFit, match="rematerialization.*more devices.*per-device batch"):
    memory.check_fits(tiny, remat="none", fsdp=1, batch_per_device=8)


def _spawn(workdir, steps):
  env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "tests.lift.tiny_run", workdir, str(steps)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_checkpoint(proc, ckpt_dir, after: int, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if any(s > after for s in steps):
      return max(steps)
    if proc.poll() is not None:
      raise AssertionError(f"training exited early:\n{proc.stdout.read().decode()[-3000:]}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("no checkpoint appeared in time")


def test_sigterm_saves_and_kill9_resume_equals_uninterrupted(tmp_path):
  steps = 24
  inputs = tmp_path / "inputs"
  tiny_run.make_inputs(str(inputs))
  loop.run(tiny_run.config(str(inputs), steps), str(tmp_path / "straight"))
  expected = tiny_run.final_params(str(tmp_path / "straight"))

  workdir = str(tmp_path / "interrupted")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  proc = _spawn(workdir, steps)
  _wait_for_checkpoint(proc, ckpt_dir, after=0)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  saved = TrainCheckpointer(ckpt_dir).latest_step()
  assert saved is not None and 0 < saved < steps  # SIGTERM wrote a checkpoint and stopped early

  proc = _spawn(workdir, steps)
  _wait_for_checkpoint(proc, ckpt_dir, after=saved)
  proc.kill()  # kill -9, possibly mid-save
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "transformer"))

  summary = loop.run(tiny_run.config(str(inputs), steps), workdir)
  assert summary["steps"] == steps
  got = tiny_run.final_params(workdir)
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_lora_trains_only_adapters_and_merges_into_the_weights():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
  model = cogvideox.CogVideoXTransformer3D(CFG, rngs=nnx.Rngs(0))
  tr = train.Trainer(model, mesh=mesh, trainable="lora", lora_rank=4, lora_alpha=8.0,
                     optim=train.OptimConfig(lr=1e-2, warmup_steps=1, total_steps=10))
  state, metrics = run_steps(tr, batches(2))
  assert bool(metrics["finite"])
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state["params"])]
  assert paths and all("lora_a" in p or "lora_b" in p for p in paths), paths
  x = batches(1, size=2)[0]
  args = [jnp.asarray(x["latents"]), jnp.asarray(x["text_embeds"]), jnp.array([10, 500])]
  adapted = np.asarray(tr.model(state, merge_lora=False)(*args))
  merged = tr.model(state)
  base = cogvideox.CogVideoXTransformer3D(CFG, rngs=nnx.Rngs(0))
  assert np.abs(np.asarray(merged.blocks.layers.attn1.to_q.kernel[...]) -
                np.asarray(base.blocks.layers.attn1.to_q.kernel[...])).max() > 0
  np.testing.assert_array_equal(np.asarray(merged.blocks.layers.ff.up.kernel[...]),
                                np.asarray(base.blocks.layers.ff.up.kernel[...]))
  # W + (α/r)·A·B computes what the adapted layers did.
  np.testing.assert_allclose(np.asarray(merged(*args)), adapted, rtol=1e-5, atol=1e-5)


def test_optimizer_moments_are_sharded_like_their_parameters():
  tr = trainer_on({"fsdp": 8})
  state = tr.init_state()
  kernel_spec = state["params"]["blocks"]["layers"]["ff"]["up"]["kernel"].sharding.spec
  assert "fsdp" in jax.tree.leaves(tuple(kernel_spec))
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.shape == (2, 32, 128)]
  assert moments and all(m.sharding.spec == kernel_spec for m in moments)


def test_blocks_trains_only_the_blocks():
  """The paper's default: only blocks.* have gradients and optimizer state; the embeddings,
  norm_out and proj_out stay bit-identical through steps."""
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  tr = train.Trainer(cogvideox.CogVideoXTransformer3D(CFG, rngs=nnx.Rngs(0)), mesh=mesh,
                     optim=train.OptimConfig(lr=1e-2, warmup_steps=1, total_steps=10))
  assert tr.trainable == "blocks"
  state, metrics = run_steps(tr, batches(2))
  assert bool(metrics["finite"])
  assert set(state["params"]) == {"blocks"}
  n_params = len(jax.tree.leaves(state["params"]))
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0]
  assert len(moments) == 2 * n_params  # Adam's mu and nu, for the block parameters only
  base = nnx.to_pure_dict(nnx.state(cogvideox.CogVideoXTransformer3D(CFG, rngs=nnx.Rngs(0)),
                                    nnx.Param))
  trained = nnx.to_pure_dict(nnx.state(tr.model(state), nnx.Param))
  frozen = [k for k in base if k != "blocks"]
  assert {"patch_proj", "text_proj", "time_embedding", "norm_final", "norm_out", "proj_out",
          "norm_out_linear"} <= set(frozen)
  for k in frozen:
    for x, y in zip(jax.tree.leaves(trained[k]), jax.tree.leaves(base[k])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=k)
  assert max_diff(trained["blocks"], base["blocks"]) > 0


def test_real_samples_weigh_the_stored_lambda_unless_overridden():
  """λ has one source: the reward prepare stored with the real videos; LossConfig overrides it."""
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  batch = batches(1)[0]
  batch["reward"] = np.where(batch["is_real"], np.float32(0.3), batch["reward"])
  for loss, want in ((train.LossConfig(), 0.3), (train.LossConfig(real_weight=0.5), 0.5)):
    tr = train.Trainer(cogvideox.CogVideoXTransformer3D(CFG, rngs=nnx.Rngs(0)), mesh=mesh,
                       loss=loss, optim=train.OptimConfig(lr=1e-3, warmup_steps=1,
                                                          total_steps=10))
    _, metrics = tr.step(tr.init_state(), batch)
    assert float(metrics["real_weight"]) == pytest.approx(want, abs=1e-7)

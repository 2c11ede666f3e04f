"""grain loaders: determinism, per-host split, mixing ratio, latent sampling, resumable iterators."""

import numpy as np
import pytest

from lift_jax.data import generated, loaders
from lift_jax.data.critic_sft import make_sft_dataset

SHAPE = (4, 3, 2, 5)  # [C, f, h, w]


def example(i, real=False):
  """Example i: its latent mean is i everywhere, so a batch tells which records it holds."""
  return {"latent_mean": np.full(SHAPE, i, np.float32),
          "latent_logvar": np.full(SHAPE, np.log(0.01 ** 2), np.float32),  # σ = 0.01
          "text_embeds": np.full((6, 8), i, np.float32),
          "reward": np.float32(0.9 if real else i / 100), "is_real": real, "all_good": real,
          "caption": b"c", "path": b"p"}


def data(n_syn=24, n_real=8):
  return {"synthetic": [example(i) for i in range(n_syn)],
          "real": [example(1000 + i, True) for i in range(n_real)]}


def ids(batch):
  """Which record each row came from (the latent mean rounded; σ is tiny)."""
  return np.rint(batch["latents"][:, 0, 0, 0, 0] / 0.5).astype(int).tolist()


def make(d=None, **kw):
  kw = {"batch_size": 4, "seed": 0, "scaling_factor": 0.5, "process_index": 0,
        "process_count": 1, **kw}
  return loaders.make_dataset(data() if d is None else d, **kw)


def take(ds, n):
  it = loaders.make_iterator(ds)
  return [next(it) for _ in range(n)]


def test_batch_layout_and_fields():
  b = make(num_epochs=1)[0]
  assert b["latents"].shape == (4, 3, 4, 2, 5) and b["latents"].dtype == np.float32  # [B,F,C,H,W]
  assert b["text_embeds"].shape == (4, 6, 8)
  assert b["reward"].dtype == np.float32 and b["is_real"].dtype == bool
  assert set(b) == set(loaders.BATCH_KEYS)
  for row, i in zip(range(4), ids(b)):
    assert b["reward"][row] == pytest.approx(0.9 if i >= 1000 else i / 100)
    assert b["is_real"][row] == (i >= 1000)


def test_one_epoch_sees_every_record_once():
  ds = make(num_epochs=1)
  seen = [i for b in ds for i in ids(b)]
  assert sorted(seen) == list(range(24)) + list(range(1000, 1008))
  assert loaders.steps_per_epoch(ds) == 8
  assert loaders.steps_per_epoch(make()) is None  # repeats forever


def test_latent_sampling_is_scaled_noisy_and_keyed_by_index():
  ds = make(num_epochs=1)
  sampler = loaders.SampleLatents(0.5, seed=0, process_index=0)
  b = ds[1]  # step 1: elements 4..7
  for row, i in enumerate(ids(b)):
    eps = sampler.noise(4 + row, SHAPE)
    want = ((i + 0.01 * eps) * 0.5).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(b["latents"][row], want, rtol=1e-6, atol=1e-6)
  assert b["latents"].std() > 0
  mean_only = make(num_epochs=1, sample=False)[1]
  np.testing.assert_array_equal(mean_only["latents"][:, 0, 0, 0, 0] / 0.5, ids(b))


def test_deterministic_and_seed_dependent():
  a, b = take(make(), 5), take(make(), 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["latents"], y["latents"])
  c = take(make(seed=1), 5)
  assert [ids(x) for x in a] != [ids(x) for x in c]
  # Same order, different noise: the noise depends on the seed too.
  assert not np.array_equal(a[0]["latents"], c[0]["latents"])


def test_epochs_reshuffle():
  ds = make(d=data(24, 0), num_epochs=2)
  order = [i for b in ds for i in ids(b)]
  assert sorted(order[:24]) == sorted(order[24:]) == list(range(24))
  assert order[:24] != order[24:]


def test_hosts_take_their_rows_of_the_one_host_batches():
  """The global batches do not depend on the number of hosts: host p of 2 (local batch 2) gets rows
  [2p, 2p + 2) of each 1-host batch of 4, noise included; every host the same number of steps."""
  d = data(26, 8)
  one = make(d=d, num_epochs=1, batch_size=4)
  hosts = [make(d=d, num_epochs=1, batch_size=2, process_index=p, process_count=2)
           for p in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == len(one)
  seen = [[i for b in ds for i in ids(b)] for ds in hosts]
  assert not set(seen[0]) & set(seen[1])  # one epoch: no record on both hosts
  for step in range(len(one)):
    for key in loaders.BATCH_KEYS:
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][step][key], hosts[1][step][key]]), one[step][key])
  with pytest.raises(ValueError, match="process_index"):
    make(d=d, process_index=2, process_count=2)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_mixing_ratio(fraction):
  batches = take(make(real_fraction=fraction, batch_size=8), 10)
  real = np.concatenate([b["is_real"] for b in batches])
  assert real.mean() == pytest.approx(fraction, abs=0.02)
  # The real split (8 records) repeats as needed; the synthetic one is not exhausted early.
  assert len({i for b in batches for i in ids(b) if i >= 1000}) == 8


def test_default_mix_follows_split_sizes_and_extremes():
  real = np.concatenate([b["is_real"] for b in make(num_epochs=1)])
  assert real.mean() == pytest.approx(8 / 32)
  only_syn = take(make(real_fraction=0.0), 3)
  assert not any(b["is_real"].any() for b in only_syn)
  only_real = take(make(real_fraction=1.0), 3)
  assert all(b["is_real"].all() for b in only_real)
  assert not np.concatenate([b["is_real"] for b in make(d=data(8, 0), num_epochs=1)]).any()
  with pytest.raises(ValueError, match="real split has 0"):
    make(d=data(8, 0), real_fraction=0.3)
  with pytest.raises(ValueError, match="scaling_factor"):
    loaders.make_dataset(data(), batch_size=2, process_index=0, process_count=1)


def test_iterator_state_resumes_at_the_next_batch():
  ds = make(real_fraction=0.25)
  it = loaders.make_iterator(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  fresh = loaders.make_iterator(make(real_fraction=0.25))
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in loaders.BATCH_KEYS:
      np.testing.assert_array_equal(got[k], want[k])


def test_iterator_checkpoint_with_orbax(tmp_path):
  import grain
  import orbax.checkpoint as ocp

  it = loaders.make_iterator(make())
  for _ in range(2):
    next(it)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mngr.save(2, args=ocp.args.Composite(
      step=ocp.args.JsonSave({"step": 2}), data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  want = next(it)

  restored_it = loaders.make_iterator(make())
  mngr2 = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  out = mngr2.restore(mngr2.latest_step(), args=ocp.args.Composite(
      step=ocp.args.JsonRestore(), data=loaders.checkpoint_args(restored_it, restore=True)))
  assert out["step"] == {"step": 2}
  got = next(out["data"])
  np.testing.assert_array_equal(got["latents"], want["latents"])
  np.testing.assert_array_equal(got["text_embeds"], want["text_embeds"])


def test_reads_a_prepared_dataset(tmp_path):
  out = str(tmp_path / "prepared")
  d = data(6, 2)
  generated.write_dataset(out, {"synthetic": d["synthetic"], "real": d["real"]},
                          latent_shape=SHAPE, text_shape=(6, 8), embed_dtype="bfloat16",
                          metadata={"scaling_factor": 0.5})
  ds = loaders.make_dataset(out, batch_size=4, num_epochs=1, process_index=0, process_count=1)
  batches = list(ds)
  assert sorted(i for b in batches for i in ids(b)) == list(range(6)) + [1000, 1001]
  assert batches[0]["text_embeds"].dtype.name == "bfloat16"
  f32 = loaders.make_dataset(out, batch_size=4, num_epochs=1, process_index=0, process_count=1,
                             text_dtype=np.float32)
  assert f32[0]["text_embeds"].dtype == np.float32


def test_worker_processes_give_the_same_batches_and_resume():
  ds = make(real_fraction=0.25)
  want = take(ds, 4)
  it = loaders.make_iterator(ds, worker_count=2)
  try:
    got = [next(it) for _ in range(2)]
    state = it.get_state()
  finally:
    it.close()
  it = loaders.make_iterator(make(real_fraction=0.25), worker_count=2)
  try:
    it.set_state(state)
    got += [next(it) for _ in range(2)]
  finally:
    it.close()
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["latents"], w["latents"])


def test_critic_sft_hosts_take_their_rows_of_the_one_host_batches():
  """The critic SFT pipeline splits as the train loader does: the global batches of 2 hosts
  (host 0's rows, then host 1's) are the batches of 1 host, epoch after epoch."""
  source = [{"i": np.int32(k)} for k in range(20)]
  one = make_sft_dataset(source, lambda e: e, batch_size=4, seed=3, num_epochs=2,
                         process_index=0, process_count=1)
  hosts = [make_sft_dataset(source, lambda e: e, batch_size=2, seed=3, num_epochs=2,
                            process_index=p, process_count=2) for p in range(2)]
  assert len(one) == len(hosts[0]) == len(hosts[1]) == 10
  for k in range(len(one)):
    np.testing.assert_array_equal(np.concatenate([h[k]["i"] for h in hosts]), one[k]["i"])
  assert sorted(np.concatenate([one[k]["i"] for k in range(5)]).tolist()) == list(range(20))
  with pytest.raises(ValueError, match="global batch of 8 x 3 hosts"):
    make_sft_dataset(source, lambda e: e, batch_size=8, process_index=0, process_count=3)

"""Critic inference at scale: bucketed prompt lengths (a bounded number of compiled prefill
programs, the same labels) and the replicas-or-tensor-parallel serving plan."""

import numpy as np
import pytest

from lift_jax.stages import score as score_stage
from lift_jax.models.llama.generate import _generate
from lift_jax.parallel import serving
from tests.models.test_critic import ref  # noqa: F401  (the tiny perturbed critic fixture)

GIB = 1024**3


def test_bucket_lengths_are_quarter_octaves():
  assert [serving.bucket_length(n) for n in (1, 64, 65, 128, 129, 300, 1700, 2048, 2049)] == [
      64, 64, 128, 128, 192, 320, 1792, 2048, 2560]
  for n in range(1, 5000, 7):  # never shorter, at most 25% (or 63 tokens) longer
    b = serving.bucket_length(n)
    assert n <= b <= max(n * 1.25, n + 63, 64)
  assert len({serving.bucket_length(n) for n in range(1025, 2049)}) == 4


def test_13b_replicates_40b_goes_tensor_parallel():
  h100 = 80 * GIB
  plan = serving.plan_serving(26 * GIB, num_devices=8, capacity_bytes=h100,
                              divisible=(40, 40, 32000, 13824), cache_bytes=4 * GIB)
  assert plan.axes == {"data": 8, "tensor": 1}
  assert "8 data-parallel replica(s)" in plan.report("critic")
  # 40B (Yi-34B LLM: 56 query / 8 KV heads) + InternViT-6B: ~82 GB in bf16.
  plan = serving.plan_serving(82 * GIB, num_devices=8, capacity_bytes=h100,
                              divisible=(56, 8, 64000, 20480), cache_bytes=8 * GIB)
  assert plan.axes == {"data": 4, "tensor": 2}
  assert plan.per_device_bytes == 41 * GIB + 8 * GIB // 8
  assert "tensor parallel over 2 devices x 4 replica(s)" in plan.report()
  assert [serving.whole_rows(4, data, 3) for data in (1, 2, 3, 8)] == [4, 4, 4, 8]
  with pytest.raises(ValueError, match=r"do not fit 8 device\(s\) of 10.0 GiB"):
    serving.plan_serving(82 * GIB, num_devices=8, capacity_bytes=10 * GIB, divisible=(56, 8))


@pytest.mark.slow
def test_scoring_20_videos_compiles_at_most_3_prefill_programs(ref):  # noqa: F811
  """Generate mode (prefill + decode, one program per prompt length), greedy."""
  critic = ref["critic"]
  rng = np.random.default_rng(3)
  words = "a the panda horse runs eats bamboo beach at dusk in snow slowly red small".split()
  captions = [" ".join(rng.choice(words, size=int(n))).capitalize() + "."
              for n in rng.integers(1, 18, size=20)]
  videos = [critic.pixel_values(rng.integers(0, 256, (9, 40, 60, 3), dtype=np.uint8))
            for _ in range(20)]
  greedy = dict(temperature=0.0, max_new_tokens=4)
  runs = {}
  for bucket in (False, True):
    critic.bucket_prompts = bucket
    before = _generate.jitted_fn._cache_size()
    scores = score_stage.Scorer(critic, "generate", sampling=greedy, batch_videos=4).score(
        videos, captions)
    runs[bucket] = (_generate.jitted_fn._cache_size() - before, scores)
  critic.bucket_prompts = True
  (exact_programs, exact), (bucketed_programs, bucketed) = runs[False], runs[True]
  print(f"prefill programs: {exact_programs} unbucketed, {bucketed_programs} bucketed")
  assert exact_programs > 3  # the captions do vary the prompt length
  assert 1 <= bucketed_programs <= 3
  assert [s.answers for s in bucketed] == [s.answers for s in exact]  # greedy: the same tokens
  assert [s.labels for s in bucketed] == [s.labels for s in exact]

"""The eval-critic stage as 2 processes (gloo, 4 fake CPU devices each, as 2 hosts): each scores
its share of the HRA ratings, and the gathered result equals 1 process's, prediction for
prediction."""

import json

import pytest

from lift_jax.stages import critic_eval
from tests.lift.test_critic_train import tiny_hra, tiny_vila
from tests.stages import processes


def test_gather_json_one_process():
  assert critic_eval.gather_json({"a": [1]}, "x") == [{"a": [1]}]


@pytest.mark.slow
def test_two_processes_give_one_process_accuracy(tmp_path):
  v = tiny_vila(tmp_path)
  data = tiny_hra(tmp_path)
  outs = {}
  for count in (1, 2):
    outs[count] = str(tmp_path / f"eval-{count}.json")
    logs = processes.run(["-m", "lift_jax.stages.critic_eval", f"--critic={v['folder']}",
                          f"--data={data}", f"--out={outs[count]}", "--config.dtype=float32",
                          "--config.batch_size=4", "--config.max_new_tokens=8",
                          "--config.mesh.fsdp=1", "--noprogress"], count, timeout=300)
    assert len(logs) == count
  one, two = (json.load(open(outs[c])) for c in (1, 2))
  assert (one["processes"], two["processes"]) == (1, 2)
  n = len(one["results"]["logits"]["predictions"])
  assert n >= 6
  for mode in ("logits", "generate"):
    a, b = one["results"][mode], two["results"][mode]
    assert [p["index"] for p in b["predictions"]] == list(range(n))  # none twice or missing
    assert b["predictions"] == a["predictions"], mode
    assert (b["accuracy"], b["average"], b["total"]) == (a["accuracy"], a["average"], a["total"])

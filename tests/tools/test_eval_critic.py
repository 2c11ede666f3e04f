"""tools/train_critic.py then tools/eval_critic.py on a tiny random VILA and a tiny synthetic HRA
set: training continues from its checkpoint and exports a PEFT adapter; the accuracy the eval tool
reports (both scoring modes) equals a hand count from single-prompt forward passes and answers."""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lift_jax.data import hra
from lift_jax.models import critic
from lift_jax.models.critic import prompts
from tests.lift.test_critic_train import tiny_hra, tiny_vila
from lift_jax.stages import critic_train as critic_train_stage
from tests.tools import tool_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool(name):
  return tool_module.load(name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_critic")
  v = tiny_vila(root)
  data = tiny_hra(root)
  tool = critic_train_stage
  cfg = tool.default_config("configs/critic_13b_sft.py")
  cfg.critic.path = v["folder"]
  cfg.critic.dtype = cfg.critic.param_dtype = "float32"
  cfg.critic.remat = "none"
  cfg.data.dir = data
  cfg.data.batch_size = 8
  cfg.data.length_multiple = 32
  cfg.lora.r, cfg.lora.alpha = 32, 64.0
  cfg.optim.lr = 3e-3
  cfg.mesh.fsdp = 2  # two of the eight fake devices
  cfg.checkpoint_every = 2
  cfg.log_every = 1
  cfg.eval.batch_size = 6
  cfg.compilation_cache = ""
  work = str(root / "run")
  cfg.num_steps = 2  # a first job of 2 steps ...
  cfg.eval.at_end = False
  first = tool.run(cfg, work, progress=False)
  cfg.num_steps = 120  # ... continued to 120
  cfg.eval.at_end = True
  second = tool.run(cfg, work, progress=False)
  return dict(v, data=data, first=first, second=second, work=work)


def test_training_resumes_and_exports_a_peft_adapter(trained):
  first, second = trained["first"], trained["second"]
  assert first["steps"] == 2 and first["resumed_from"] is None and "eval" not in first
  assert second["resumed_from"] == 2 and second["steps"] == 120 and second["bad_steps"] == 0
  with open(os.path.join(trained["work"], "train_history.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == list(range(3, 121))  # the resumed run starts at step 3
  with open(os.path.join(second["adapter"], "adapter_config.json")) as f:
    conf = json.load(f)
  assert conf["r"] == 32 and conf["peft_type"] == "LORA"
  assert second["eval"]["logits"]["total"] and second["last"]["label_accuracy"] >= 0.75


_FORWARD = nnx.jit(lambda m, *a: m(*a))


def hand_count(c, source, mode, prompt_style="inference"):
  """Per-dimension (correct, total), one prompt at a time, labels read without the library's
  helpers: the full forward's last-position argmax over the three label tokens, or the first word
  of a greedy answer."""
  ids = prompts.label_token_ids(c.tokenizer, c.template)
  counts = {}
  for i in range(len(source)):
    ex = source[i]
    caption, dim, label = (hra.text(ex[k]) for k in ("caption", "dimension", "label"))
    if prompt_style == "train":
      caption = " " + caption
    if mode == "logits":
      px = c.config.image(np.asarray(ex["frames"]))[None]  # a short video: its own n frames
      b = c.batch([caption], dim, frame_counts=[px.shape[1]])
      args = [jnp.asarray(x) for x in (px, b.token_ids, b.image_slots, b.attention_mask)]
      logits = np.asarray(_FORWARD(c.model, *args))[0, -1]
      pred = max(("Good", "Normal", "Bad"), key=lambda k: logits[ids[k]])
    else:
      answer = c.generate([np.asarray(ex["frames"])], [caption], dim, max_new_tokens=24)[0]
      m = re.match(r"\s*(Good|Normal|Bad)\b", answer)
      pred = m.group(1) if m else None
    ok, n = counts.get(dim, (0, 0))
    counts[dim] = (ok + int(pred == label), n + 1)
  return counts


def check(result, counts, n):
  assert result["total"] == {d: t for d, (_, t) in counts.items()}
  assert result["correct"] == {d: ok for d, (ok, _) in counts.items()}
  assert result["accuracy"] == {d: round(100 * ok / t, 2) for d, (ok, t) in counts.items()}
  want = np.mean([ok / t for ok, t in counts.values()]) * 100  # Table 2's Avg: mean of the columns
  assert result["average"] == pytest.approx(want, abs=0.01) and len(result["predictions"]) == n


def test_eval_tool_matches_a_hand_count(trained):
  tool = load_tool("eval_critic")
  adapter = trained["second"]["adapter"]
  kw = dict(lora=adapter, batch_size=4, max_new_tokens=24, dtype="float32", mesh={"fsdp": 1},
            progress=False, with_predictions=True)
  out = tool.run(trained["folder"], trained["data"], split="test", modes=("logits", "generate"),
                 **kw)
  c = critic.Critic.load(trained["folder"], adapter)
  splits = hra.open_hra(trained["data"])
  for mode in ("logits", "generate"):
    r = out["results"][mode]
    check(r, hand_count(c, splits["test"], mode), len(splits["test"]))
    print(f"test {mode}: {r['accuracy']} avg {r['average']} (unparseable {r['unparseable']})")
  assert "Semantic Consistency" in tool.table(out) and "Avg" in tool.table(out)
  # The training split, asked as trained: the learned labels come back (3 labels: chance is 1/3),
  # so the counts are not all zeros.
  train = tool.run(trained["folder"], trained["data"], split="train",
                   modes=("logits", "generate"), prompt_style="train", **kw)["results"]
  for mode in ("logits", "generate"):
    check(train[mode], hand_count(c, splits["train"], mode, "train"), len(splits["train"]))
    print(f"train {mode} (train prompts): {train[mode]['accuracy']} avg {train[mode]['average']}")
    assert train[mode]["overall"] >= 60

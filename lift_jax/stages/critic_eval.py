r"""The critic evaluation stage: LiFT-Critic accuracy on LiFT-HRA (the paper's Table 2), label
accuracy per dimension and their mean.

  lift-jax eval-critic --critic ckpt/VILA1.5-13b --lora runs/critic_13b/adapter --data work/hra \
      [--config.split=test] [--config.mode=logits|generate|both] [--out eval.json]

--critic is a VILA folder (with --lora: a PEFT adapter, e.g. `lift-jax train-critic`'s
WORKDIR/adapter or the released LiFT-Critic-13b-lora) or a converted critic with the LoRA merged.
Modes: "logits" takes the argmax of P(Good/Normal/Bad) for the answer's first token (one forward
pass); "generate" answers greedily and reads the label at the start of the answer (no label:
wrong, and counted as unparseable). Prompts are LiFT's inference prompts (caption + question);
--config.prompt_style=train uses the human turn as trained on. Prints a table and one JSON object
(with --out, also written there, predictions included).

Several processes (a pod) each evaluate their share of the ratings (rating i goes to process
i % P) with a critic on their own devices; the predictions are gathered through the coordination
service, every process computes the same totals and process 0 writes --out, so the result does
not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import sys

import jax
import ml_collections
import numpy as np
from absl import flags
from jax._src import distributed as jax_distributed  # the coordination client (no public API)
from jax.experimental import multihost_utils
from ml_collections import config_flags

from lift_jax import files, parallel, runtime
from lift_jax.data import hra
from lift_jax.lift import critic_eval
from lift_jax.models.critic import prompts
from lift_jax.models.critic.vila import Critic
from lift_jax.stages import cli


def default_config() -> ml_collections.ConfigDict:
  """The evaluation settings (override as --config.<field>=value)."""
  return ml_collections.ConfigDict(dict(
      split="test",                 # the HRA split to score
      mode="both",                  # logits | generate | both
      batch_size=8,                 # prompts per critic call
      max_new_tokens=64,            # generate mode: answer length cap
      prompt_style="inference",     # inference (LiFT's run_critic) | train (the trained turn)
      template=ml_collections.config_dict.placeholder(str),  # conversation template (inferred)
      dtype="bfloat16",             # compute dtype (float32 on CPU)
      mesh=dict(fsdp=-1),           # each process's mesh over its own devices
      limit=ml_collections.config_dict.placeholder(int)))  # only the first N ratings


def modes_of(mode: str) -> tuple[str, ...]:
  if mode == "both":
    return critic_eval.SCORING_MODES
  if mode not in critic_eval.SCORING_MODES:
    raise ValueError(f"config mode={mode!r}: expected logits, generate or both")
  return (mode,)


def run(critic_path: str, data: str, *, lora: str | None = None, split: str = "test",
        modes=("logits", "generate"), batch_size: int = 8, max_new_tokens: int = 64,
        prompt_style: str = "inference", template: str | None = None, dtype: str = "bfloat16",
        mesh: dict | None = None, limit: int | None = None, progress: bool = True,
        with_predictions: bool = False) -> dict:
  """Loads the critic and scores the split in each mode; {"results": {mode: ...}, ...}, the same
  on every process of a multi-process job."""
  runtime.setup()
  splits = hra.open_hra(data)
  if split not in splits:
    raise ValueError(f"{data}: no split {split!r} (has {sorted(splits)})")
  # Each process scores its share on its own devices: no collective spans hosts.
  m = parallel.mesh_from_config(mesh, jax.local_devices(), single_device_none=True)
  # A critic on a URI is copied to local disk once (its readers take local files).
  critic = Critic.load(files.local_mirror(critic_path), files.local_mirror(lora),
                       template=template, dtype=dtype, mesh=m)
  want = (critic.config.image.height, critic.config.image.width)
  stored = tuple(hra.hra_metadata(data).get("image_size", want))
  if stored != want:
    raise ValueError(f"{data}: frames stored at {list(stored)}, the critic takes {list(want)}")
  source = splits[split]
  n = len(source) if limit is None else min(limit, len(source))
  mine = parallel.process_share(list(range(n)))
  out = {"critic": files.absolute(critic_path), "lora": lora, "data": files.absolute(data),
         "split": split, "template": critic.template.name, "prompt_style": prompt_style,
         "processes": jax.process_count(), "results": {}}
  with parallel.use_mesh(m) if m is not None else contextlib.nullcontext():
    for mode in modes:
      res = critic_eval.evaluate(critic, source, mode=mode, batch_size=batch_size,
                                  prompt_style=prompt_style, max_new_tokens=max_new_tokens,
                                  limit=limit, progress=progress, indices=mine)
      rows = [r for share in gather_json(res.predictions, f"eval-critic:{mode}") for r in share]
      out["results"][mode] = critic_eval.from_predictions(mode, rows).to_json(with_predictions)
  return out


_GATHERS = 0


def gather_json(value, name: str, timeout_s: float = 3600.0) -> list:
  """Every process's JSON-able `value`, in process order (every process calls it at the same
  point). Through the coordination service's key-value store, as `parallel.any_process` agrees on
  a flag: a host-side device collective of ragged data would need padding and can interleave with
  other collectives."""
  global _GATHERS
  if jax.process_count() == 1:
    return [value]
  text = json.dumps(value)
  client = jax_distributed.global_state.client
  if client is None:  # started without jax.distributed: a device collective of padded bytes
    data = np.frombuffer(text.encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.asarray([data.size], np.int32))))
    padded = np.zeros(size, np.uint8)
    padded[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in every]
  n, _GATHERS = _GATHERS, _GATHERS + 1
  key = f"lift_jax:gather:{name}:{n}"
  client.key_value_set(f"{key}:{jax.process_index()}", text)
  timeout_ms = int(timeout_s * 1000)
  return [json.loads(client.blocking_key_value_get(f"{key}:{i}", timeout_ms))
          for i in range(jax.process_count())]


def table(summary: dict) -> str:
  """Table 2's layout: one row per mode, accuracy (%) per dimension and the average."""
  dims = list(prompts.QUESTION_KEYS)
  head = ["mode"] + [prompts.DIMENSIONS[d] for d in dims] + ["Avg", "n"]
  rows = [head]
  for mode, r in summary["results"].items():
    acc = r["accuracy"]
    rows.append([mode] + [f"{acc[d]:.2f}" if d in acc else "-" for d in dims]
                + [f"{r['average']:.2f}", str(sum(r["total"].values()))])
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def define_flags() -> dict:
  return dict(
      config=config_flags.DEFINE_config_dict("config", default_config(), "evaluation settings"),
      critic=flags.DEFINE_string("critic", None, "VILA folder or converted critic",
                                 required=True),
      lora=flags.DEFINE_string("lora", None, "PEFT LoRA adapter folder merged at load"),
      data=flags.DEFINE_string("data", None, "HRA dataset (lift_jax.data.hra)", required=True),
      out=flags.DEFINE_string("out", None, "write the results (with predictions) as JSON here"),
      progress=flags.DEFINE_bool("progress", True, "show a progress bar"))


def stage(f: dict) -> dict:
  c = f["config"].value
  summary = run(f["critic"].value, f["data"].value, lora=f["lora"].value, split=c.split,
                modes=modes_of(c.mode), batch_size=c.batch_size,
                max_new_tokens=c.max_new_tokens, prompt_style=c.prompt_style,
                template=c.template, dtype=c.dtype, mesh=c.mesh.to_dict(), limit=c.limit,
                progress=f["progress"].value, with_predictions=bool(f["out"].value))
  if f["out"].value and jax.process_index() == 0:
    files.write_text(f["out"].value, json.dumps(summary, indent=2, ensure_ascii=False))
  print(table(summary), file=sys.stderr)
  return {**summary, "results": {m: {k: v for k, v in r.items() if k != "predictions"}
                                 for m, r in summary["results"].items()}}


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv)


if __name__ == "__main__":
  main()

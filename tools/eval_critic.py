#!/usr/bin/env python
r"""LiFT-Critic accuracy on LiFT-HRA (the paper's Table 2): label accuracy per dimension, and mean.

  python tools/eval_critic.py --critic ckpt/VILA1.5-13b --lora runs/critic_13b/adapter \
      --data work/hra [--split test] [--mode logits|generate|both] [--out eval.json]

--critic is a VILA folder (with --lora: a PEFT adapter, e.g. tools/train_critic.py's
WORKDIR/adapter or the released LiFT-Critic-13b-lora) or a converted critic with the LoRA merged.
Modes: "logits" takes the argmax of P(Good/Normal/Bad) for the answer's first token (one forward
pass); "generate" answers greedily and reads the label at the start of the answer (no label:
wrong, and counted as unparseable). Prompts are LiFT's inference prompts (caption + question);
--prompt_style=train uses the human turn as trained on. Prints a table and one JSON object (with
--out, also written there, predictions included).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lift_jax import parallel, runtime  # noqa: E402
from lift_jax.data import hra  # noqa: E402
from lift_jax.lift import critic_eval  # noqa: E402
from lift_jax.models.critic.vila import Critic  # noqa: E402


def define_flags() -> None:
  """Defined when run as a script only, so tests can import several tools into one process."""
  global _CRITIC, _LORA, _DATA, _SPLIT, _MODE, _BATCH, _MAX_NEW, _STYLE, _TEMPLATE, _DTYPE
  global _MESH, _LIMIT, _OUT, _PROGRESS
  _CRITIC = flags.DEFINE_string("critic", None, "VILA folder or converted critic", required=True)
  _LORA = flags.DEFINE_string("lora", None, "PEFT LoRA adapter folder merged at load")
  _DATA = flags.DEFINE_string("data", None, "HRA dataset (lift_jax.data.hra)", required=True)
  _SPLIT = flags.DEFINE_string("split", "test", "split to score")
  _MODE = flags.DEFINE_enum("mode", "both", ["logits", "generate", "both"], "scoring mode(s)")
  _BATCH = flags.DEFINE_integer("batch_size", 8, "prompts per critic call")
  _MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "generate mode: answer length cap")
  _STYLE = flags.DEFINE_enum("prompt_style", "inference", ["inference", "train"], "prompt form")
  _TEMPLATE = flags.DEFINE_string("template", None, "conversation template (default: inferred)")
  _DTYPE = flags.DEFINE_string("dtype", "bfloat16", "compute dtype (float32 on CPU)")
  _MESH = flags.DEFINE_string("mesh", "fsdp=-1", "mesh axis sizes, e.g. data=1,fsdp=-1,tensor=1")
  _LIMIT = flags.DEFINE_integer("limit", None, "score only the first N ratings")
  _OUT = flags.DEFINE_string("out", None, "write the results (with predictions) as JSON here")
  _PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def parse_mesh(text: str) -> dict[str, int]:
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = part.partition("=")
    out[name.strip()] = int(size)
  return out


def run(critic_path: str, data: str, *, lora: str | None = None, split: str = "test",
        modes=("logits", "generate"), batch_size: int = 8, max_new_tokens: int = 64,
        prompt_style: str = "inference", template: str | None = None, dtype: str = "bfloat16",
        mesh: dict | None = None, limit: int | None = None, progress: bool = True,
        with_predictions: bool = False) -> dict:
  """Loads the critic and scores the split in each mode; {"results": {mode: ...}, ...}."""
  runtime.setup()
  splits = hra.open_hra(data)
  if split not in splits:
    raise ValueError(f"{data}: no split {split!r} (has {sorted(splits)})")
  m = parallel.mesh_from_config(mesh, single_device_none=True)
  critic = Critic.load(critic_path, lora, template=template, dtype=dtype, mesh=m)
  want = (critic.config.image.height, critic.config.image.width)
  stored = tuple(hra.hra_metadata(data).get("image_size", want))
  if stored != want:
    raise ValueError(f"{data}: frames stored at {list(stored)}, the critic takes {list(want)}")
  out = {"critic": os.path.abspath(critic_path), "lora": lora, "data": os.path.abspath(data),
         "split": split, "template": critic.template.name, "prompt_style": prompt_style,
         "results": {}}
  with parallel.use_mesh(m) if m is not None else contextlib.nullcontext():
    for mode in modes:
      res = critic_eval.evaluate(critic, splits[split], mode=mode, batch_size=batch_size,
                                  prompt_style=prompt_style, max_new_tokens=max_new_tokens,
                                  limit=limit, progress=progress)
      out["results"][mode] = res.to_json(with_predictions=with_predictions)
  return out


def table(summary: dict) -> str:
  """Table 2's layout: one row per mode, accuracy (%) per dimension and the average."""
  from lift_jax.models.critic import prompts

  dims = list(prompts.QUESTION_KEYS)
  head = ["mode"] + [prompts.DIMENSIONS[d] for d in dims] + ["Avg", "n"]
  rows = [head]
  for mode, r in summary["results"].items():
    acc = r["accuracy"]
    rows.append([mode] + [f"{acc[d]:.2f}" if d in acc else "-" for d in dims]
                + [f"{r['average']:.2f}", str(sum(r["total"].values()))])
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lift_jax.checkpoint.safetensors import CheckpointError

  modes = ("logits", "generate") if _MODE.value == "both" else (_MODE.value,)
  try:
    summary = run(_CRITIC.value, _DATA.value, lora=_LORA.value, split=_SPLIT.value, modes=modes,
                  batch_size=_BATCH.value, max_new_tokens=_MAX_NEW.value,
                  prompt_style=_STYLE.value, template=_TEMPLATE.value, dtype=_DTYPE.value,
                  mesh=parse_mesh(_MESH.value), limit=_LIMIT.value, progress=_PROGRESS.value,
                  with_predictions=bool(_OUT.value))
  except (CheckpointError, FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
  if _OUT.value:
    tmp = f"{_OUT.value}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2, ensure_ascii=False)
    os.replace(tmp, _OUT.value)
  print(table(summary), file=sys.stderr)
  brief = {**summary, "results": {m: {k: v for k, v in r.items() if k != "predictions"}
                                  for m, r in summary["results"].items()}}
  print(json.dumps(brief, indent=2, ensure_ascii=False))


if __name__ == "__main__":
  define_flags()
  app.run(main)

"""The run report: one offline HTML page (PNGs embedded) that says whether alignment worked.

Reward distribution before and after fine-tuning, label counts per dimension, the training loss
curves, frames of the same prompts and seeds before and after, and the run's config.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
import os
from typing import Any, Sequence

import numpy as np

LABELS = ("Good", "Normal", "Bad")


def _read_jsonl(path: str | None) -> list[dict[str, Any]]:
  if not path or not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  import matplotlib.pyplot as plt
  plt.close(fig)
  return base64.b64encode(buf.getvalue()).decode()


def _plt():
  import logging

  logging.getLogger("matplotlib").setLevel(logging.WARNING)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def reward_histogram(before: Sequence[float], after: Sequence[float]) -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.2))
  bins = np.linspace(0.0, 1.0, 21)
  if len(before):
    ax.hist(before, bins=bins, alpha=0.6, label=f"before (mean {np.mean(before):.3f})")
  if len(after):
    ax.hist(after, bins=bins, alpha=0.6, label=f"after (mean {np.mean(after):.3f})")
  ax.set_xlabel("reward")
  ax.set_ylabel("videos")
  ax.legend()
  return _png(fig)


def label_counts(rows: list[dict[str, Any]]) -> dict[str, collections.Counter]:
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for row in rows:
    for dim, label in (row.get("labels") or {}).items():
      counts[dim][label] += 1
  return counts


def label_chart(before: dict, after: dict) -> str:
  plt = _plt()
  dims = sorted(set(before) | set(after))
  fig, axes = plt.subplots(1, max(len(dims), 1), figsize=(3.2 * max(len(dims), 1), 3), squeeze=False)
  for ax, dim in zip(axes[0], dims):
    x = np.arange(len(LABELS))
    ax.bar(x - 0.2, [before.get(dim, {}).get(lb, 0) for lb in LABELS], 0.4, label="before")
    ax.bar(x + 0.2, [after.get(dim, {}).get(lb, 0) for lb in LABELS], 0.4, label="after")
    ax.set_xticks(x, LABELS)
    ax.set_title(dim, fontsize=9)
  axes[0][0].legend(fontsize=8)
  return _png(fig)


def loss_chart(history: list[dict[str, Any]]) -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.2))
  steps = [h["step"] for h in history]
  ax.plot(steps, [h["loss"] for h in history], label="reward-weighted loss")
  ax.plot(steps, [h["mse"] for h in history], label="unweighted v-MSE", alpha=0.7)
  ax.set_xlabel("step")
  ax.legend()
  return _png(fig)


def frame_strip(before: list[dict], after: list[dict], root_before: str, root_after: str,
                max_videos: int = 4, frames: int = 4) -> str | None:
  """Rows of frames for the same (prompt, seed) before and after."""
  from lift_jax.data import video as video_lib

  key = lambda r: (r.get("prompt"), r.get("seed"))
  after_by_key = {key(r): r for r in after}
  pairs = [(b, after_by_key[key(b)]) for b in before if key(b) in after_by_key][:max_videos]
  if not pairs:
    return None
  plt = _plt()
  fig, axes = plt.subplots(2 * len(pairs), frames, figsize=(1.8 * frames, 1.5 * 2 * len(pairs)),
                           squeeze=False)
  for i, (b, a) in enumerate(pairs):
    for j, (row, root, tag) in enumerate(((b, root_before, "before"), (a, root_after, "after"))):
      path = row["path"] if os.path.isabs(row["path"]) else os.path.join(root, row["path"])
      try:
        clip = video_lib.read_video(path)
      except Exception:  # a missing video leaves its row blank rather than failing the report
        clip = None
      for k in range(frames):
        ax = axes[2 * i + j][k]
        ax.axis("off")
        if clip is not None:
          ax.imshow(clip[int(round(k * (len(clip) - 1) / max(frames - 1, 1)))])
      axes[2 * i + j][0].set_title(f"{tag}: {row.get('prompt', '')[:40]} (seed {row.get('seed')})",
                                   fontsize=7, loc="left")
  return _png(fig)


def write_report(out_html: str, *, config: dict[str, Any], scores_before: str | None,
                 scores_after: str | None, manifest_before: str | None = None,
                 manifest_after: str | None = None, train_history: str | None = None,
                 title: str = "LiFT run report") -> str:
  """Writes `out_html` (atomically) and returns its path."""
  before, after = _read_jsonl(scores_before), _read_jsonl(scores_after)
  history = _read_jsonl(train_history)
  r_before = [r["reward"] for r in before if r.get("reward") is not None]
  r_after = [r["reward"] for r in after if r.get("reward") is not None]
  parts = [f"<h1>{html.escape(title)}</h1>"]
  summary = (f"mean reward before {np.mean(r_before):.4f} ({len(r_before)} videos), after "
             f"{np.mean(r_after):.4f} ({len(r_after)} videos)" if r_before and r_after else
             f"{len(r_before)} videos scored before, {len(r_after)} after")
  parts.append(f"<p>{html.escape(summary)}</p>")
  parts.append("<h2>Reward distribution</h2>")
  parts.append(f'<img src="data:image/png;base64,{reward_histogram(r_before, r_after)}">')
  parts.append("<h2>Labels per dimension</h2>")
  parts.append(f'<img src="data:image/png;base64,{label_chart(label_counts(before), label_counts(after))}">')
  if history:
    parts.append("<h2>Training</h2>")
    parts.append(f'<img src="data:image/png;base64,{loss_chart(history)}">')
  strip = None
  if manifest_before and manifest_after:
    strip = frame_strip(_read_jsonl(manifest_before), _read_jsonl(manifest_after),
                        os.path.dirname(manifest_before), os.path.dirname(manifest_after))
  if strip:
    parts.append("<h2>Same prompts and seeds, before and after</h2>")
    parts.append(f'<img src="data:image/png;base64,{strip}">')
  parts.append("<h2>Config</h2>")
  parts.append(f"<pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>")
  page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
          "</title><style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
          "img{max-width:100%}</style></head><body>" + "\n".join(parts) + "</body></html>")
  tmp = out_html + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(page)
  os.replace(tmp, out_html)
  return out_html

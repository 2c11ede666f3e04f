"""The run report: one offline HTML page (PNGs embedded) that says whether alignment worked.

First screen: the verdict and a table of mean rewards, one row per generator (base, fine-tuned,
and any other, such as a plain fine-tuning control), one column per judge (the critic, and any
other scorer such as a rater), then the critic's held-out accuracy against the majority class when
the run trained one. Below: frames of the same prompts and seeds from each generator, label
counts per dimension, reward distributions, the training loss curves, and the run's config.

`write_report` takes the base/fine-tuned critic scores the runner always has, and `extra` (the
config's `report` block) for the rest; see its docstring.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
from typing import Any, Sequence

import numpy as np

from lift_jax import files
from lift_jax.data import records
from lift_jax.data import video as video_lib
from lift_jax.models.critic.vocabulary import LABELS

BASE, TUNED = "base", "fine-tuned"


def _optional_json(path: str | None) -> dict[str, Any]:
  return files.read_json(path, "a JSON file", missing_ok=True)


def _optional_jsonl(path: str | None) -> list[dict[str, Any]]:
  return records.read_jsonl(path, missing_ok=True)


def _plt():
  import logging

  logging.getLogger("matplotlib").setLevel(logging.WARNING)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _png(fig) -> str:
  plt = _plt()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  plt.close(fig)
  return base64.b64encode(buf.getvalue()).decode()


def _img(png: str) -> str:
  return f'<img src="data:image/png;base64,{png}">'


def rewards_of(rows: list[dict]) -> list[float]:
  return [r["reward"] for r in rows if r.get("reward") is not None]


def reward_histogram(series: dict[str, Sequence[float]], title: str = "") -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.0))
  bins = np.linspace(0.0, 1.0, 21)
  for name, values in series.items():
    if len(values):
      ax.hist(values, bins=bins, alpha=0.5, label=f"{name} (mean {np.mean(values):.3f})")
  ax.set_xlabel("reward")
  ax.set_ylabel("videos")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  return _png(fig)


def label_counts(rows: list[dict[str, Any]]) -> dict[str, collections.Counter]:
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for row in rows:
    for dim, label in (row.get("labels") or {}).items():
      counts[dim][label] += 1
  return counts


def label_chart(sets: dict[str, dict], title: str = "") -> str:
  """Bars of Good/Normal/Bad counts per dimension, one bar colour per generator."""
  plt = _plt()
  dims = sorted({d for counts in sets.values() for d in counts})
  n = max(len(dims), 1)
  fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
  width = 0.8 / max(len(sets), 1)
  for ax, dim in zip(axes[0], dims):
    x = np.arange(len(LABELS))
    for i, (name, counts) in enumerate(sets.items()):
      ax.bar(x - 0.4 + width * (i + 0.5), [counts.get(dim, {}).get(lb, 0) for lb in LABELS],
             width, label=name)
    ax.set_xticks(x, LABELS)
    ax.set_title(f"{title}{dim}", fontsize=9)
  axes[0][0].legend(fontsize=7)
  return _png(fig)


def loss_chart(histories: dict[str, list[dict[str, Any]]]) -> str:
  """Training loss per step, one line per run (the fine-tuning's unweighted v-MSE dashed)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.0))
  for name, history in histories.items():
    steps = [h["step"] for h in history]
    line, = ax.plot(steps, [h["loss"] for h in history], label=f"{name}: loss")
    if history and "mse" in history[0] and any(h["mse"] != h["loss"] for h in history):
      ax.plot(steps, [h["mse"] for h in history], "--", color=line.get_color(), alpha=0.6,
              label=f"{name}: unweighted v-MSE")
  ax.set_xlabel("step")
  ax.set_yscale("log")
  ax.legend(fontsize=7)
  return _png(fig)


def frame_strip(sets: list[tuple[str, list[dict], str]], max_videos: int = 4,
                frames: int = 5) -> str | None:
  """For each (prompt, seed) the first set has, a row of frames from every set that has it too:
  `sets` is [(name, manifest rows, the folder their paths start from)]."""
  key = lambda r: (r.get("prompt"), r.get("seed"))
  by_key = [{key(r): r for r in rows} for _, rows, _ in sets]
  keys = [key(r) for r in sets[0][1] if all(key(r) in b for b in by_key)][:max_videos] \
      if sets else []
  if not keys:
    return None
  plt = _plt()
  n = len(sets)
  fig, axes = plt.subplots(n * len(keys), frames, figsize=(1.6 * frames, 1.2 * n * len(keys)),
                           squeeze=False)
  for i, k in enumerate(keys):
    for j, ((name, _, root), b) in enumerate(zip(sets, by_key)):
      row = b[k]
      path = files.resolve(row["path"], root)
      try:
        clip = video_lib.read_video(path)
      except Exception:  # a missing video leaves its row blank rather than failing the report
        clip = None
      for f in range(frames):
        ax = axes[n * i + j][f]
        ax.set_xticks([])
        ax.set_yticks([])
        if clip is not None:
          ax.imshow(clip[int(round(f * (len(clip) - 1) / max(frames - 1, 1)))])
      axes[n * i + j][0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    axes[n * i][0].set_title(f"{k[0]} (seed {k[1]})", fontsize=8, loc="left")
  fig.subplots_adjust(hspace=0.35, wspace=0.05)
  return _png(fig)


def majority_baseline(texts_json: str | None, split: str = "test") -> dict[str, dict]:
  """Per dimension of an HRA dataset's split: the most common label and its share."""
  data = _optional_json(texts_json)
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for _, dim, _, answer in data.get(split, []):
    counts[dim][answer.split(".")[0].strip()] += 1
  return {d: {"label": c.most_common(1)[0][0], "share": c.most_common(1)[0][1] / sum(c.values()),
              "n": sum(c.values())} for d, c in counts.items()}


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
  return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(x: float | None) -> str:
  return "–" if x is None else f"{x:.3f}"


def write_report(out_html: str, *, config: dict[str, Any], scores_before: str | None,
                 scores_after: str | None, manifest_before: str | None = None,
                 manifest_after: str | None = None, train_history: str | None = None,
                 title: str = "LiFT run report", extra: dict[str, Any] | None = None) -> str:
  """Writes `out_html` (atomically) and returns its path.

  `extra` (all optional): `intro` (a paragraph of text for the top), `generators` ({name:
  manifest.jsonl} besides base and fine-tuned; name the fine-tuned one with `tuned_name`),
  `scores` (a list of {generator, by, scores}: scores.jsonl files by other judges or of the other
  generators; the critic's of base and fine-tuned are given), `histories` ({name:
  train_history.jsonl} besides the fine-tuning's), `critic` ({summary: the critic SFT's
  train_summary.json, data: its HRA dataset folder} for the accuracy table).
  """
  extra = dict(extra or {})
  tuned = extra.get("tuned_name", TUNED)
  manifests = {BASE: manifest_before, tuned: manifest_after, **(extra.get("generators") or {})}
  scores = [dict(generator=BASE, by="critic", scores=scores_before),
            dict(generator=tuned, by="critic", scores=scores_after)] + list(extra.get("scores")
                                                                               or ())
  table: dict[tuple[str, str], list[dict]] = {}
  for s in scores:
    table[(s["generator"], s["by"])] = _optional_jsonl(s["scores"])
  judges = list(dict.fromkeys(s["by"] for s in scores))
  gens = list(manifests)
  mean = {k: (float(np.mean(rewards_of(v))) if rewards_of(v) else None) for k, v in table.items()}

  parts = [f"<h1>{html.escape(title)}</h1>"]
  if extra.get("intro"):
    parts.append(f"<p class='intro'>{html.escape(extra['intro'])}</p>")
  verdicts = []
  for judge in judges:
    b, a = mean.get((BASE, judge)), mean.get((tuned, judge))
    if b is None or a is None:
      continue
    others = [f"{g} {mean[(g, judge)]:.3f}" for g in gens if g not in (BASE, tuned)
              and mean.get((g, judge)) is not None]
    verdicts.append(f"By the {judge}: mean reward {b:.3f} before, {a:.3f} after "
                    f"({'+' if a >= b else '−'}{abs(a - b):.3f})"
                    + (f"; {', '.join(others)}" if others else "") + ".")
  same = [g for g in gens if len({r.get("reward") for r in table.get((g, "critic"), [])}) == 1]
  if same and len(same) == len(gens):
    verdicts.append("The critic gave every video the same reward: its scores cannot tell the "
                    "videos apart, so reward weighting could not differ from plain fine-tuning.")
  if verdicts:
    parts.append("<p class='verdict'>" + "<br>".join(map(html.escape, verdicts)) + "</p>")
  head = ["generator (held-out prompts)"] + [f"mean reward by the {j}" for j in judges] + [
      "videos"]
  rows = []
  for g in gens:
    n = max((len(table.get((g, j), [])) for j in judges), default=0)
    rows.append([html.escape(g)] + [_fmt(mean.get((g, j))) for j in judges] + [str(n)])
  parts.append(_table(head, rows))
  parts.append("<p class='note'>Reward: Good 0.9 / Normal 0.2 / Bad 0.05 per question, mean of "
               "the three (LiFT Eq. 2).</p>")

  critic = extra.get("critic") or {}
  summary = _optional_json(critic.get("summary"))
  acc = ((summary.get("eval") or {}).get("logits") or {}).get("accuracy")
  if acc:
    base = majority_baseline(files.join(critic["data"], "texts.json")
                             if critic.get("data") else None)
    rows = [[html.escape(d), f"{a:.1f} %",
             f"{100 * base[d]['share']:.1f} % ({base[d]['label']})" if d in base else "–",
             str(base.get(d, {}).get("n", "–"))] for d, a in acc.items()]
    parts.append("<h2>The critic, trained on the ratings</h2>")
    parts.append(_table(["question", "held-out accuracy", "majority class", "ratings"], rows))
    # The summary's accuracy is rounded to 2 decimals: compare with the share rounded alike.
    weak = [d for d, a in acc.items() if d in base and a <= round(100 * base[d]["share"], 2)]
    if weak:
      parts.append("<p class='warn'>The critic does not beat the majority class on "
                   f"{html.escape(', '.join(weak))}: its rewards carry little of the ratings' "
                   "judgement there.</p>")

  sets = [(g, _optional_jsonl(m), files.parent(m)) for g, m in manifests.items() if m]
  strip = frame_strip([s for s in sets if s[1]])
  if strip:
    parts.append("<h2>Same prompts and seeds, one row per generator</h2>")
    parts.append(_img(strip))
  for judge in judges:
    counts = {g: label_counts(table.get((g, judge), [])) for g in gens}
    if any(counts.values()):
      parts.append(f"<h2>Labels per question, by the {html.escape(judge)}</h2>")
      parts.append(_img(label_chart(counts)))
  for judge in judges:
    series = {g: rewards_of(table.get((g, judge), [])) for g in gens}
    if any(series.values()):
      parts.append(f"<h2>Reward distribution, by the {html.escape(judge)}</h2>")
      parts.append(_img(reward_histogram(series)))
  histories = {tuned: _optional_jsonl(train_history)}
  histories.update({k: _optional_jsonl(v) for k, v in (extra.get("histories") or {}).items()})
  histories = {k: v for k, v in histories.items() if v}
  if histories:
    parts.append("<h2>Training</h2>")
    parts.append(_img(loss_chart(histories)))
  parts.append("<h2>Config</h2>")
  parts.append(f"<pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>")
  page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
          "</title><style>body{font-family:sans-serif;max-width:1000px;margin:1.5em auto}"
          "img{max-width:100%}table{border-collapse:collapse;margin:.5em 0}"
          "td,th{border:1px solid #bbb;padding:.25em .7em;text-align:right}"
          "td:first-child,th:first-child{text-align:left}.verdict{font-size:1.15em}"
          ".note{color:#555;font-size:.9em}.warn{color:#a40}</style></head><body>"
          + "\n".join(parts) + "</body></html>")
  files.write_text(out_html, page)
  return out_html

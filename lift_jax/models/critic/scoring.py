"""Scoring videos with the LiFT-Critic: three questions per video -> labels -> one reward.

Two modes:
  "generate" (the paper's): the critic answers each question as text (LiFT samples at temperature
      0.2); the label is read from the start of the answer (`lift.reward.parse_label`) and the rest
      is the reason.
  "logits" (deterministic, one forward pass per question, no decoding): the label is the argmax of
      P(Good) / P(Normal) / P(Bad) for the answer's first token right after the assistant prompt.
      When those three together hold less than `min_label_mass` of the probability the critic is
      not answering in its format, and the answer counts as unparseable.

Several videos go through the critic per call: `batch_videos` videos x 3 questions, each video's
frames encoded once. The last, short batch is padded with copies so every call has one shape.

`score_manifest` is the score stage of the LiFT loop: manifest.jsonl -> scores.jsonl (appended
and flushed a batch at a time, so a killed run resumes where it stopped), the videos whose answers
could not be read in `<out stem>.unparsed.jsonl`, and `<out stem>.summary.json`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import time
import zlib
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

from lift_jax.data import records as records_lib
from lift_jax.data import video as video_lib
from lift_jax.lift import reward as reward_lib
from lift_jax.models.critic import prompts

log = logging.getLogger(__name__)

MODES = ("generate", "logits")
# LiFT's run_critic_*.py: temperature 0.2 (sampled), no top_p, HF's default top_k 50, one beam.
LIFT_SAMPLING = dict(temperature=0.2, top_k=50, top_p=1.0, num_beams=1, max_new_tokens=512)


@dataclasses.dataclass
class VideoScore:
  """One video's verdict. `reward` is None when a label is missing and the policy is "skip"."""

  mode: str
  labels: dict[str, str | None]
  scores: dict[str, float | None]
  reward: float | None
  answers: dict[str, str] | None = None  # generate
  reasons: dict[str, str] | None = None  # generate
  probs: dict[str, dict[str, float]] | None = None  # logits: {dim: {label: p}}
  label_mass: dict[str, float] | None = None  # logits: P(Good)+P(Normal)+P(Bad)
  expected_scores: dict[str, float] | None = None  # logits: Σ p·s over the renormalised labels
  expected_reward: float | None = None
  unparsed: tuple[str, ...] = ()  # dimensions without a readable label

  @property
  def ok(self) -> bool:
    return self.reward is not None

  def to_json(self) -> dict[str, Any]:
    out = {"mode": self.mode, "labels": self.labels, "scores": self.scores, "reward": self.reward}
    for key in ("answers", "reasons", "probs", "label_mass", "expected_scores", "expected_reward"):
      value = getattr(self, key)
      if value is not None:
        out[key] = value
    if self.unparsed:
      out["unparsed"] = list(self.unparsed)
    return out


def sampling_settings(sampling: dict | Any | None) -> dict[str, Any]:
  """LiFT's sampling with overrides; checks what `Critic.generate` can do (no beam search)."""
  d = dict(LIFT_SAMPLING)
  if sampling is not None:
    d.update(sampling.to_dict() if hasattr(sampling, "to_dict") else dict(sampling))
  unknown = sorted(set(d) - set(LIFT_SAMPLING))
  if unknown:
    raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(LIFT_SAMPLING)}")
  if int(d["num_beams"]) != 1:
    raise ValueError(f"sampling.num_beams={d['num_beams']}: only 1 (LiFT's setting) is supported")
  d["top_p"] = 1.0 if d["top_p"] is None else float(d["top_p"])
  d["top_k"] = 0 if d["top_k"] is None else int(d["top_k"])
  return d


class Scorer:
  """A critic plus the scoring settings; `score(videos, captions)` -> one `VideoScore` a video."""

  def __init__(self, critic, mode: str = "generate", *,
               reward_config: reward_lib.RewardConfig | None = None,
               sampling: dict | None = None, batch_videos: int = 1, seed: int = 0,
               questions: Sequence[str] = prompts.QUESTION_KEYS, pad_batches: bool = True):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_videos < 1:
      raise ValueError(f"batch_videos must be >= 1, got {batch_videos}")
    self.critic = critic
    self.mode = mode
    self.rewards = reward_config or reward_lib.RewardConfig()
    self.sampling = sampling_settings(sampling)
    self.batch_videos = int(batch_videos)
    self.seed = int(seed)
    self.questions = tuple(questions)
    self.pad_batches = pad_batches
    if mode == "logits":  # fails now, not after the first batch, if the labels share a token
      self.label_ids = prompts.label_token_ids(critic.tokenizer, critic.template, reward_lib.LABELS)

  def pixel_values(self, video: np.ndarray) -> np.ndarray:
    """uint8 `[N,H,W,3]` -> the critic's `[F,3,S,S]` (so a reader need not keep whole clips)."""
    return self.critic.pixel_values(video)

  def score(self, videos: Sequence[np.ndarray], captions: Sequence[str], *,
            keys: Sequence[str] | None = None,
            stats: reward_lib.LabelStats | None = None) -> list[VideoScore]:
    """Scores videos (uint8 clips or `pixel_values` outputs), `batch_videos` per critic call.

    `keys` (e.g. paths) name the videos in `stats` and seed each batch's sampling, so a batch
    is answered the same whatever ran before it.
    """
    if len(videos) != len(captions):
      raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
    keys = [str(i) for i in range(len(videos))] if keys is None else list(keys)
    out: list[VideoScore] = []
    for start in range(0, len(videos), self.batch_videos):
      stop = start + self.batch_videos
      out += self._score_batch(list(videos[start:stop]), list(captions[start:stop]),
                               keys[start:stop], stats)
    return out

  def _score_batch(self, videos, captions, keys, stats) -> list[VideoScore]:
    n = len(videos)
    if self.pad_batches and n < self.batch_videos:
      pad = self.batch_videos - n
      videos, captions = videos + [videos[-1]] * pad, captions + [captions[-1]] * pad
    q = len(self.questions)
    args = (videos, [c for c in captions for _ in range(q)], list(self.questions) * len(videos),
            [v for v in range(len(videos)) for _ in range(q)])
    if self.mode == "generate":
      s = self.sampling
      rng = None
      if s["temperature"] > 0:
        rng = jax.random.fold_in(jax.random.key(self.seed),
                                 zlib.crc32("\n".join(keys).encode()) & 0x7FFFFFFF)
      answers = self.critic.generate(*args, max_new_tokens=int(s["max_new_tokens"]),
                                     temperature=float(s["temperature"]), top_k=s["top_k"],
                                     top_p=s["top_p"], rng=rng)
      return [self._from_answers(answers[i * q:(i + 1) * q], keys[i], stats) for i in range(n)]
    probs = np.asarray(self.critic.label_probs(*args, labels=reward_lib.LABELS), np.float64)
    return [self._from_probs(probs[i * q:(i + 1) * q], keys[i], stats) for i in range(n)]

  def _finish(self, labels: dict[str, str | None], key: str, **extra) -> VideoScore:
    unparsed = tuple(d for d, label in labels.items() if label is None)
    if unparsed and self.rewards.unparseable == "bad":
      labels = {d: label or "Bad" for d, label in labels.items()}
    scores = {d: self.rewards.score(label) for d, label in labels.items()}
    value = None
    if all(label is not None for label in labels.values()):
      value = self.rewards.reward(labels, where=key)
    return VideoScore(mode=self.mode, labels=labels, scores=scores, reward=value,
                      unparsed=unparsed, **extra)

  def _from_answers(self, answers: Sequence[str], key: str, stats) -> VideoScore:
    labels, reasons = {}, {}
    for dim, answer in zip(self.questions, answers):
      label, reason = reward_lib.split_answer(answer)
      if self.rewards.parse_rule != "start":
        label = reward_lib.parse_label(answer, self.rewards.parse_rule)
      labels[dim], reasons[dim] = label, reason
      if stats is not None:
        stats.add(dim, label, answer, key)
    return self._finish(labels, key, answers=dict(zip(self.questions, answers)), reasons=reasons)

  def _from_probs(self, probs: np.ndarray, key: str, stats) -> VideoScore:
    labels, table, mass, expected = {}, {}, {}, {}
    for dim, p in zip(self.questions, probs):
      table[dim] = {label: float(x) for label, x in zip(reward_lib.LABELS, p)}
      mass[dim] = float(p.sum())
      expected[dim] = self.rewards.expected_score(table[dim])
      label = reward_lib.LABELS[int(np.argmax(p))]
      if mass[dim] < self.rewards.min_label_mass:
        label = None
      labels[dim] = label
      if stats is not None:
        stats.add(dim, label, label or f"(P(Good)+P(Normal)+P(Bad) = {mass[dim]:.3g})", key)
    w = self.rewards.dimension_weights
    soft = sum(w[d] * expected[d] for d in self.questions) / sum(w[d] for d in self.questions)
    return self._finish(labels, key, probs=table, label_mass=mass, expected_scores=expected,
                        expected_reward=float(soft))


def score_videos(critic, videos, captions, mode: str = "generate", **kw) -> list[VideoScore]:
  """One-call form of `Scorer(critic, mode, **kw).score(videos, captions)`."""
  return Scorer(critic, mode, **kw).score(videos, captions)


# ----------------------------------------------------------------------------- the score stage


def output_paths(out: str) -> tuple[str, str]:
  """(unparsed.jsonl, summary.json) beside `out`: scores.jsonl -> scores.unparsed.jsonl, ..."""
  stem = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
  return stem + ".unparsed.jsonl", stem + ".summary.json"


def _read_rows_repairing(path: str) -> list[dict]:
  """The rows of an appended JSONL file; a torn last line (a killed writer) is cut off."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  rows, good_end, pos = [], 0, 0
  for raw in data.splitlines(keepends=True):
    pos += len(raw)
    line = raw.strip()
    if not line:
      good_end = pos
      continue
    try:
      obj = json.loads(line)
      if not raw.endswith(b"\n"):
        raise ValueError("no newline")
    except ValueError:
      if pos == len(data):  # only the last line may be torn
        log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", path,
                    len(raw))
        break
      raise ValueError(f"{path}: line {len(rows) + 1} is not valid JSON; fix or remove the file "
                       "(or pass overwrite) to score again") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{path}: expected JSON objects, got {type(obj).__name__}")
    rows.append(obj)
    good_end = pos
  if good_end < len(data):
    with open(path, "r+b") as f:
      f.truncate(good_end)
  return rows


def _manifest_rows(manifest: str) -> list[dict]:
  rows, seen = [], set()
  for n, row in enumerate(records_lib.read_jsonl(manifest), 1):
    where = f"{manifest}:{n}"
    path = row.get("path")
    caption = row.get("prompt", row.get("caption"))
    if not isinstance(path, str) or not path:
      raise ValueError(f"{where}: missing field 'path' (a video file), has {sorted(row)}")
    if not isinstance(caption, str):
      raise ValueError(f"{where}: missing field 'prompt' (or 'caption'), has {sorted(row)}")
    resolved = records_lib.resolve(path, manifest)
    if resolved in seen:
      raise ValueError(f"{where}: video {resolved} is listed twice in the manifest")
    seen.add(resolved)
    rows.append({"row": row, "resolved": resolved, "caption": caption})
  return rows


def _row_path(row_path: str, resolved: str, out: str) -> str:
  """The path as scores.jsonl stores it: relative to its folder when the manifest's was relative."""
  if os.path.isabs(os.path.expanduser(row_path)):
    return resolved
  return os.path.relpath(resolved, os.path.dirname(os.path.abspath(out)))


def _append(f, rows: Iterable[dict]) -> None:
  for row in rows:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
  f.flush()
  os.fsync(f.fileno())


def _read_pixels(scorer: Scorer, path: str, read: Callable[[str], np.ndarray]):
  try:
    return scorer.pixel_values(read(path)), None
  except video_lib.VideoReadError as err:
    return None, err.reason
  except (ValueError, OSError) as err:  # e.g. a grey-scale or zero-sized stream
    return None, f"{type(err).__name__}: {err}"


def score_manifest(scorer: Scorer, manifest: str, out: str, *, overwrite: bool = False,
                   progress: bool = True, read: Callable[[str], np.ndarray] | None = None,
                   read_workers: int = 2) -> dict[str, Any]:
  """Scores every video of generate's manifest into `out` (scores.jsonl); returns the summary.

  Resumes by default: videos already in `out` or in the unparsed file are not scored again
  (`overwrite=True` starts over; deleting the unparsed file retries just those videos). Unreadable videos are skipped, counted and named (and tried
  again by the next run). Videos are decoded in `read_workers` threads while the critic runs.
  """
  read = read or video_lib.read_video
  start = time.perf_counter()
  out = os.path.abspath(out)
  unparsed_path, summary_path = output_paths(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  items = _manifest_rows(manifest)
  if overwrite:
    for p in (out, unparsed_path, summary_path):
      if os.path.exists(p):
        os.remove(p)
  done_rows = _read_rows_repairing(out)
  unparsed_rows = _read_rows_repairing(unparsed_path)
  modes = {r.get("mode") for r in done_rows + unparsed_rows} - {None}
  if modes - {scorer.mode}:
    raise ValueError(f"{out}: holds scores made in mode {sorted(modes)}, this run is "
                     f"{scorer.mode!r}; pass overwrite (--overwrite) or another --out")
  done = {records_lib.resolve(r["path"], out) for r in done_rows + unparsed_rows if "path" in r}
  todo = [it for it in items if it["resolved"] not in done]
  resumed = len(items) - len(todo)
  if resumed:
    log.info("%s: %d of %d videos already scored; scoring the other %d", out, resumed,
             len(items), len(todo))

  stats = reward_lib.LabelStats()
  unreadable: list[str] = []
  scored_now = unparsed_now = 0
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc=f"score ({scorer.mode})", unit="video", dynamic_ncols=True)
  rewards_now: list[float] = []
  with open(out, "a", encoding="utf-8") as fout, \
       open(unparsed_path, "a", encoding="utf-8") as fbad, \
       concurrent.futures.ThreadPoolExecutor(max(1, read_workers)) as pool:
    lookahead = 2 * scorer.batch_videos
    futures = collections.deque()
    queue = iter(todo)

    def refill():
      while len(futures) < lookahead:
        it = next(queue, None)
        if it is None:
          return
        futures.append((it, pool.submit(_read_pixels, scorer, it["resolved"], read)))

    refill()
    while futures:
      batch = []
      while futures and len(batch) < scorer.batch_videos:
        it, fut = futures.popleft()
        px, err = fut.result()
        refill()
        if px is None:
          unreadable.append(f"{it['resolved']}: {err}")
          log.warning("skipping unreadable video %s: %s", it["resolved"], err)
          if bar is not None:
            bar.update(1)
          continue
        batch.append((it, px))
      if not batch:
        continue
      results = scorer.score([px for _, px in batch], [it["caption"] for it, _ in batch],
                             keys=[it["resolved"] for it, _ in batch], stats=stats)
      good, bad = [], []
      for (it, _), res in zip(batch, results):
        row = {"path": _row_path(it["row"]["path"], it["resolved"], out), "prompt": it["caption"]}
        if "seed" in it["row"]:
          row["seed"] = it["row"]["seed"]
        row.update(res.to_json())
        (good if res.ok else bad).append(row)
        if res.ok:
          rewards_now.append(res.reward)
      _append(fout, good)
      _append(fbad, bad)
      scored_now += len(good)
      unparsed_now += len(bad)
      if bar is not None:
        bar.update(len(batch))
        bar.set_postfix(reward=f"{np.mean(rewards_now):.3f}" if rewards_now else "-",
                        unparsed=unparsed_now, unreadable=len(unreadable))
  if bar is not None:
    bar.close()

  summary = summarize(manifest, out, items, scorer.mode)
  seconds = time.perf_counter() - start
  summary.update({
      "unreadable": len(unreadable), "unreadable_videos": unreadable,
      "remaining": (len(items) - summary["scored"] - summary["unparseable_videos"]
                    - len(unreadable)),
      "this_run": {"scored": scored_now, "unparseable_videos": unparsed_now,
                   "resumed": resumed, "seconds": round(seconds, 3),
                   "videos_per_second": round((scored_now + unparsed_now) / seconds, 4)
                   if seconds > 0 else None,
                   **stats.to_json()},
  })
  tmp = f"{summary_path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
    f.write("\n")
  os.replace(tmp, summary_path)
  return summary


def summarize(manifest: str, out: str, items: Sequence[dict] | None = None,
              mode: str | None = None) -> dict[str, Any]:
  """Counts over everything in `out` and its unparsed file (so a resumed run reports the whole)."""
  items = _manifest_rows(manifest) if items is None else items
  unparsed_path, summary_path = output_paths(out)
  wanted = {it["resolved"] for it in items}
  rows = [r for r in _read_rows_repairing(out) if records_lib.resolve(r["path"], out) in wanted]
  bad_rows = [r for r in _read_rows_repairing(unparsed_path)
              if records_lib.resolve(r["path"], out) in wanted]
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  unparsed_by_dim: collections.Counter = collections.Counter()
  for r in rows + bad_rows:
    for dim, label in (r.get("labels") or {}).items():
      if dim not in r.get("unparsed", ()):
        counts[dim][label if label is not None else "unparseable"] += 1
    for dim in r.get("unparsed", ()):
      unparsed_by_dim[dim] += 1
  rewards = [float(r["reward"]) for r in rows]
  masses = [m for r in rows + bad_rows for m in (r.get("label_mass") or {}).values()]
  summary = {
      "mode": mode, "manifest": os.path.abspath(manifest), "out": out,
      "unparsed_file": unparsed_path, "summary_file": summary_path,
      "videos_in_manifest": len(items), "scored": len(rows),
      "unparseable_videos": len(bad_rows),
      "unparseable_answers": int(sum(unparsed_by_dim.values())),
      "unparseable_by_dimension": dict(unparsed_by_dim),
      "mean_reward": float(np.mean(rewards)) if rewards else None,
      "all_good": sum(all(v == "Good" for v in (r.get("labels") or {}).values()) for r in rows),
      "label_counts": {d: {k: int(c.get(k, 0)) for k in reward_lib.LABELS}
                       for d, c in counts.items()},
  }
  if masses:
    summary["mean_label_mass"] = float(np.mean(masses))
  return summary

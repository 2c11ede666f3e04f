r"""The score stage of the LiFT loop: videos -> the critic's answers -> labels -> one reward each.

  lift-jax score --config=configs/critic_13b.py --manifest work/videos/manifest.jsonl \
      --out work/scores.jsonl --critic ckpt/VILA1.5-13b --lora ckpt/LiFT-Critic-13b-lora-v1.5 \
      [--mode generate|logits] [--config.batch_videos=8] [--overwrite]

Inputs: generate's manifest.jsonl ({"path", "prompt", ...}) or LiFT's own `test.json`
({"video_id", "video", "caption"}, "video" under a video root). Outputs, beside each other:
  scores.jsonl                    one row a scored video: labels / scores per dimension, reward,
                                  mode, and the answers and reasons (generate) or label
                                  probabilities (logits); appended and flushed a batch at a time,
                                  so a killed run resumes where it stopped
  <stem>.unparsed.jsonl           videos one of whose answers has no label (policy "skip")
  <stem>.summary.json             counts, mean reward, label counts, unparseable answers
  critic_output_13b.json          (optional) LiFT's critic-output layout, for its own scripts

The critic is asked by `models.critic.scoring.Questioner`; labels and rewards are LiFT's rule
(`lift.reward.RewardConfig`): the paper configs read labels as LiFT's `get_score` does and round
the reward to 2 digits, and the answers the strict reading would reject are counted either way.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from absl import flags
from flax import nnx
from tqdm import tqdm

from lift_jax import files, parallel, runtime
from lift_jax.data import lift_files
from lift_jax.data import records as records_lib
from lift_jax.data import video as video_lib
from lift_jax.lift import reward as reward_lib
from lift_jax.lift.memory import device_capacity
from lift_jax.models.critic import scoring
from lift_jax.models.critic.vila import Critic, VilaCritic, vila_config
from lift_jax.models.critic.vocabulary import LABELS, QUESTION_KEYS, strictly_readable
from lift_jax.stages import cli, shards
from lift_jax.parallel import serving

log = logging.getLogger(__name__)

MODES = scoring.MODES


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


class Scorer:
  """A critic plus the scoring settings; `score(videos, captions)` -> one `VideoScore` a video."""

  def __init__(self, critic, mode: str = "generate", *,
               reward_config: reward_lib.RewardConfig | None = None,
               sampling: dict | None = None, batch_videos: int = 1, seed: int = 0,
               questions: Sequence[str] = QUESTION_KEYS, pad_batches: bool = True):
    self.questioner = scoring.Questioner(critic, mode, sampling=sampling,
                                         batch_videos=batch_videos, seed=seed,
                                         questions=questions, pad_batches=pad_batches)
    self.mode, self.batch_videos = mode, self.questioner.batch_videos
    self.questions = self.questioner.questions
    self.rewards = reward_config or reward_lib.RewardConfig()

  def pixel_values(self, video: np.ndarray) -> np.ndarray:
    return self.questioner.pixel_values(video)

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
      for key, ans in zip(keys[start:stop], self.questioner.ask(
          videos[start:stop], captions[start:stop], keys[start:stop])):
        out.append(self._from_texts(ans.texts, key, stats) if ans.texts is not None
                   else self._from_probs(ans.probs, key, stats))
    return out

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

  def _from_texts(self, answers: dict[str, str], key: str, stats) -> VideoScore:
    labels, reasons = {}, {}
    for dim, answer in answers.items():
      label, reason = reward_lib.split_answer(answer)
      if self.rewards.parse_rule != "start":
        label = reward_lib.parse_label(answer, self.rewards.parse_rule)
      labels[dim], reasons[dim] = label, reason
      if stats is not None:
        stats.add(dim, label, answer, key)
    return self._finish(labels, key, answers=dict(answers), reasons=reasons)

  def _from_probs(self, table: dict[str, dict[str, float]], key: str, stats) -> VideoScore:
    labels, mass, expected = {}, {}, {}
    for dim, p in table.items():
      mass[dim] = float(sum(p.values()))
      expected[dim] = self.rewards.expected_score(p)
      label = max(LABELS, key=lambda lab: p[lab])
      if mass[dim] < self.rewards.min_label_mass:
        label = None
      labels[dim] = label
      if stats is not None:
        stats.add(dim, label, label or f"(P(Good)+P(Normal)+P(Bad) = {mass[dim]:.3g})", key)
    w = self.rewards.dimension_weights
    soft = sum(w[d] * expected[d] for d in table) / sum(w[d] for d in table)
    return self._finish(labels, key, probs=dict(table), label_mass=mass,
                        expected_scores=expected, expected_reward=float(soft))


def score_videos(critic, videos, captions, mode: str = "generate", **kw) -> list[VideoScore]:
  """One-call form of `Scorer(critic, mode, **kw).score(videos, captions)`."""
  return Scorer(critic, mode, **kw).score(videos, captions)


# ----------------------------------------------------------------------------- the stage

def output_paths(out: str) -> tuple[str, str]:
  """(unparsed.jsonl, summary.json) beside `out`: scores.jsonl -> scores.unparsed.jsonl, ..."""
  stem = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
  return stem + ".unparsed.jsonl", stem + ".summary.json"


def _read_rows_repairing(path: str) -> list[dict]:
  """The rows of an appended JSONL file; a torn last line (a killed writer) is cut off."""
  if not files.exists(path):
    return []
  with files.open_file(path, "rb") as f:
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
    if files.is_local(path):
      with open(path, "r+b") as f:
        f.truncate(good_end)
    else:  # an object is rewritten, not truncated
      with files.open_file(path, "wb") as f:
        f.write(data[:good_end])
  return rows


def is_lift_list(path: str) -> bool:
  """Whether `path` is LiFT's test.json (a JSON list) rather than a manifest (JSON Lines)."""
  with files.open_file(path) as f:
    head = f.read(4096).lstrip()
  return head.startswith("[")


def read_inputs(path: str, video_root: str | None = None) -> list[dict]:
  """The videos to score: generate's manifest.jsonl, or LiFT's test.json (videos under
  `video_root`, default its folder)."""
  if is_lift_list(path):
    return lift_files.read_critic_inputs(path, video_root)
  if video_root:
    raise ValueError(f"{path}: a video root is for LiFT's test.json; a manifest's paths are "
                     "relative to its own folder")
  return _manifest_rows(path)


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
  if not files.is_local(row_path) or os.path.isabs(os.path.expanduser(row_path)):
    return resolved
  return files.relpath(resolved, files.parent(out))


def _append(path: str, rows: Iterable[dict]) -> None:
  """Rows appended to a JSONL file and on disk (fsync'd) before the next batch is scored."""
  lines = [json.dumps(row, ensure_ascii=False) for row in rows]
  if not lines:
    return
  if not files.is_local(path):
    files.append_lines(path, lines)
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
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
                   read_workers: int = 2, video_root: str | None = None,
                   lift_output: str | None = None) -> dict[str, Any]:
  """Scores every video of generate's manifest (or LiFT's test.json under `video_root`) into
  `out` (scores.jsonl); returns the summary. `lift_output` (a file name) also writes LiFT's
  critic-output layout beside `out`, in input order.

  Resumes by default: videos already in `out` or in the unparsed file are not scored again
  (`overwrite=True` starts over; deleting the unparsed file retries just those videos). Unreadable videos are skipped, counted and named (and tried
  again by the next run). Videos are decoded in `read_workers` threads while the critic runs.

  With several processes each scores its share of the videos (by input position) into its own
  shard files (`stages.shards`), merged by process 0 into `out` and its unparsed file.
  """
  read = read or video_lib.read_video
  start = time.perf_counter()
  out = files.absolute(out)
  unparsed_path, summary_path = output_paths(out)
  own_out = shards.shard_path(out)  # this process's scores (`out` itself for one process)
  own_unparsed = shards.shard_path(unparsed_path)
  files.makedirs(files.parent(out))
  items = read_inputs(manifest, video_root)
  if overwrite:
    for p in ({out, unparsed_path, summary_path} if jax.process_index() == 0 else set()) | {
        own_out, own_unparsed}:
      files.remove(p)
    parallel.barrier(f"score-overwrite:{out}")
  merged_rows = _read_rows_repairing(out)
  merged_unparsed = _read_rows_repairing(unparsed_path)
  done_rows = merged_rows + (_read_rows_repairing(own_out) if own_out != out else [])
  unparsed_rows = merged_unparsed + (
      _read_rows_repairing(own_unparsed) if own_out != out else [])
  modes = {r.get("mode") for r in done_rows + unparsed_rows} - {None}
  if modes - {scorer.mode}:
    raise ValueError(f"{out}: holds scores made in mode {sorted(modes)}, this run is "
                     f"{scorer.mode!r}; pass overwrite (--overwrite) or another --out")
  done = {records_lib.resolve(r["path"], out) for r in done_rows + unparsed_rows if "path" in r}
  mine = parallel.process_share(items)
  todo = [it for it in mine if it["resolved"] not in done]
  resumed = len(mine) - len(todo)
  if resumed:
    log.info("%s: %d of %d videos already scored; scoring the other %d", out, resumed,
             len(mine), len(todo))

  stats = reward_lib.LabelStats()
  unreadable: list[str] = []
  scored_now = unparsed_now = 0
  bar = None
  if progress:
    bar = tqdm(total=len(todo), desc=f"score ({scorer.mode})", unit="video", dynamic_ncols=True)
  rewards_now: list[float] = []
  for path in (own_out, own_unparsed):  # both exist after a run, even empty
    files.append_lines(path, [])
  with concurrent.futures.ThreadPoolExecutor(max(1, read_workers)) as pool:
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
        row = {"path": _row_path(it["row"].get("path", it["resolved"]), it["resolved"], out),
               "prompt": it["caption"]}
        for key in ("seed", "video_id", "video"):
          if key in it["row"]:
            row[key] = it["row"][key]
        row.update(res.to_json())
        (good if res.ok else bad).append(row)
        if res.ok:
          rewards_now.append(res.reward)
      _append(own_out, good)
      _append(own_unparsed, bad)
      scored_now += len(good)
      unparsed_now += len(bad)
      if bar is not None:
        bar.update(len(batch))
        bar.set_postfix(reward=f"{np.mean(rewards_now):.3f}" if rewards_now else "-",
                        unparsed=unparsed_now, unreadable=len(unreadable))
  if bar is not None:
    bar.close()
  position = {it["resolved"]: n for n, it in enumerate(items)}
  order = lambda row: position.get(records_lib.resolve(row["path"], out), len(position))
  for path, keep in ((out, merged_rows), (unparsed_path, merged_unparsed)):
    shards.merge(path, order, keep=keep if jax.process_index() == 0 else (),
                 read=_read_rows_repairing)

  summary = summarize(manifest, out, items, scorer.mode)
  if lift_output and jax.process_index() == 0:
    summary["lift_output"] = write_lift_output(
        files.join(files.parent(out), lift_output), out, items)
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
  if jax.process_index() == 0:
    files.write_text(summary_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
  return summary


def summarize(manifest: str, out: str, items: Sequence[dict] | None = None,
              mode: str | None = None) -> dict[str, Any]:
  """Counts over everything in `out` and its unparsed file (so a resumed run reports the whole)."""
  items = read_inputs(manifest) if items is None else items
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
  rejects = sum(not strictly_readable(a) for r in rows + bad_rows
                for a in (r.get("answers") or {}).values())
  masses = [m for r in rows + bad_rows for m in (r.get("label_mass") or {}).values()]
  summary = {
      "mode": mode, "manifest": files.absolute(manifest), "out": out,
      "unparsed_file": unparsed_path, "summary_file": summary_path,
      "videos_in_manifest": len(items), "scored": len(rows),
      "unparseable_videos": len(bad_rows),
      "unparseable_answers": int(sum(unparsed_by_dim.values())),
      "unparseable_by_dimension": dict(unparsed_by_dim),
      # Answers that do not open with a label, whatever the parse rule made of them.
      "strict_rejects": int(rejects),
      "mean_reward": float(np.mean(rewards)) if rewards else None,
      "all_good": sum(all(v == "Good" for v in (r.get("labels") or {}).values()) for r in rows),
      "label_counts": {d: {k: int(c.get(k, 0)) for k in LABELS}
                       for d, c in counts.items()},
  }
  if masses:
    summary["mean_label_mass"] = float(np.mean(masses))
  return summary


def write_lift_output(path: str, out: str, items: Sequence[dict]) -> str:
  """LiFT's critic-output list from scores.jsonl and its unparsed file: the input item and an
  answer per dimension (the answer text in generate mode, the label in logits mode)."""
  unparsed_path, _ = output_paths(out)
  by_path = {records_lib.resolve(r["path"], out): r
             for r in _read_rows_repairing(out) + _read_rows_repairing(unparsed_path)}
  entries = []
  for it in items:
    row = by_path.get(it["resolved"])
    if row is None:
      continue
    answers = row.get("answers") or {d: f"{label}." for d, label in row["labels"].items()
                                     if label is not None}
    item = {"video": it["row"].get("video", it["row"].get("path")), "caption": it["caption"],
            **{k: it["row"][k] for k in ("video_id",) if k in it["row"]}}
    entries.append(lift_files.critic_output_item(item, answers))
  return lift_files.write_json_list(path, entries)


def plan_mesh(cfg, path: str, mode: str):
  """`parallelism=auto`: replicas if the critic fits one device, else tensor parallelism
  (`parallel.serving`); returns (mesh or None, batch_videos, the plan's report)."""
  c = cfg.critic
  vc = vila_config(path, template=c.template, dtype=c.dtype, param_dtype=c.param_dtype or c.dtype,
                   remat=c.remat, attention_impl=c.attention_impl)
  prompt = serving.bucket_length(vc.num_video_frames * vc.tokens_per_frame + 256)
  new_tokens = int(cfg.sampling.max_new_tokens) if mode == "generate" else 1
  plan = serving.plan_decoder(
      serving.model_bytes(lambda: VilaCritic(vc, rngs=nnx.Rngs(0))), vc.llm,
      rows=3 * cfg.batch_videos, tokens=prompt + new_tokens, itemsize=np.dtype(c.dtype).itemsize,
      num_devices=jax.device_count(), capacity_bytes=device_capacity())
  batch_videos = serving.whole_rows(int(cfg.batch_videos), plan.axes["data"], 3)
  mesh = parallel.make_mesh(plan.axes)
  report = plan.report("critic") + f"; batch_videos {batch_videos} ({3 * batch_videos} prompts)"
  return (mesh if mesh.size > 1 else None), batch_videos, report


def run(cfg, manifest: str, out: str, *, critic_path: str | None = None, lora: str | None = None,
        mode: str | None = None, overwrite: bool = False, progress: bool = True,
        video_root: str | None = None) -> dict:
  """The stage from a critic config (configs/critic_13b.py): loads the critic and scores
  `manifest` (or LiFT's test.json) into `out`; returns the summary."""
  runtime.setup(cfg.get("compilation_cache"))
  given = critic_path or cfg.critic.path
  if not given:
    raise ValueError("no critic: pass --critic (a VILA folder or converted critic) or set "
                     "--config.critic.path")
  # A critic on a URI is copied to local disk once (its readers take local files).
  path, lora_path = files.local_mirror(given), files.local_mirror(lora or cfg.critic.lora)
  mode = mode or cfg.mode
  rewards = reward_lib.RewardConfig.from_config(cfg.reward)
  sampling = scoring.sampling_settings(cfg.sampling)  # fail on bad settings before loading
  read_inputs(manifest, video_root)  # and on a bad input list
  batch_videos = cfg.batch_videos
  if cfg.get("parallelism", "mesh") == "auto":
    mesh, batch_videos, report = plan_mesh(cfg, path, mode)
    print(report, file=sys.stderr, flush=True)  # stdout carries the JSON summary
  else:
    # Each process scores its own videos on its own devices: no collective spans hosts.
    mesh = parallel.mesh_from_config(cfg.mesh.to_dict(), jax.local_devices(),
                                     single_device_none=True)
  critic = Critic.load(path, lora_path, template=cfg.critic.template,
                       dtype=cfg.critic.dtype, param_dtype=cfg.critic.param_dtype,
                       attention_impl=cfg.critic.attention_impl, remat=cfg.critic.remat,
                       mesh=mesh, progress=progress)
  scorer = Scorer(critic, mode, reward_config=rewards, sampling=sampling,
                  batch_videos=batch_videos, seed=cfg.seed)
  with parallel.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    summary = score_manifest(scorer, manifest, out, overwrite=overwrite, progress=progress,
                             read_workers=cfg.get("read_workers", 2), video_root=video_root,
                             lift_output=cfg.get("lift_output"))
  summary["critic"] = {"path": files.absolute(given), "lora": lora or cfg.critic.lora,
                       "template": critic.template.name}
  return summary


# ----------------------------------------------------------------------------- the command

def define_flags() -> dict:
  return dict(
      config=cli.config_flag("configs/critic_13b.py", "critic config file"),
      manifest=flags.DEFINE_string("manifest", None, "generate's manifest.jsonl, or LiFT's "
                                   "test.json (a JSON list of {video_id, video, caption})",
                                   required=True),
      video_root=flags.DEFINE_string("video_root", None, "folder LiFT's test.json videos are "
                                     "under (its --image_root; default: the JSON's folder)"),
      out=flags.DEFINE_string("out", None, "scores.jsonl to write (or resume)", required=True),
      critic=flags.DEFINE_string("critic", None, "VILA folder or converted critic "
                                 "(default: config.critic.path)"),
      lora=flags.DEFINE_string("lora", None, "PEFT LoRA adapter folder "
                               "(default: config.critic.lora)"),
      mode=flags.DEFINE_enum("mode", None, ["generate", "logits"], "default: config.mode"),
      overwrite=flags.DEFINE_bool("overwrite", False, "start over instead of resuming --out"),
      progress=flags.DEFINE_bool("progress", True, "show a progress bar"))


def stage(f: dict) -> dict:
  summary = run(f["config"].value, f["manifest"].value, f["out"].value,
                critic_path=f["critic"].value, lora=f["lora"].value, mode=f["mode"].value,
                overwrite=f["overwrite"].value, progress=f["progress"].value,
                video_root=f["video_root"].value)
  if (summary["unparseable_videos"] or summary["unreadable"]) and jax.process_index() == 0:
    print(f"note: {summary['unreadable']} unreadable video(s) (listed in "
          f"{summary['summary_file']}), {summary['unparseable_videos']} with unparseable answers "
          f"(in {summary['unparsed_file']})", file=sys.stderr)
  return {k: v for k, v in summary.items() if k != "this_run"}


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv)


if __name__ == "__main__":
  main()

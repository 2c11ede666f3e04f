"""LiFT-HRA (the critic's human ratings with reasons) as a TFDS ArrayRecord dataset, no TensorFlow.

Input: the released layout, a JSON list of LLaVA-style entries (`llava/data/datasets_mixture.py`),
with the videos unpacked beside it (TFDS's "manual directory"):

  {"video": "videos/x.mp4",                                  # relative to the JSON's video root
   "conversations": [{"from": "human", "value": "<video>\\n {caption} {question}"},
                     {"from": "gpt", "value": "<Label>. <reason>"}]}     # Label: Good/Normal/Bad

One entry per (video, dimension); the dimension is recognised from the question (one of the three
critic questions, `models.critic.vocabulary.QUESTIONS`). The VIDGEN real-video add-on
(`VIDGEN/vidgen-data.json`, every answer "Good. There are no obvious problems.") has the same format
and goes to the train split by default, as in LiFT's `LiFT-HRA+vidgen` mixture.

Output (`build_hra`): a TFDS dataset directory with splits "train" and "test" (the paper: 9K / 1K;
`test_size` a count or a fraction, split by video so one video's three ratings stay together,
seeded). One example:

  video_id str (the JSON's relative path), source str ("hra" / "vidgen"), caption str,
  dimension str (a QUESTIONS key), dimension_id int32 (its index), user_text str (the human turn
  as VILA trains on it: `<video>` removed, leading space kept, right-stripped), answer str (the gpt
  turn, right-stripped), label str (Good/Normal/Bad), label_id int32 (0/1/2), reason str,
  frames uint8 [n, H, W, 3] with n = min(8, video frames) (VILA's `np.linspace(0, N-1, 8,
  dtype=int)` frames, or all N frames of a shorter video, as VILA trains on it; squashed to the
  critic processor's size with PIL bicubic: decoded once; only rescale/normalise remain),
  frame_indices int32 [n], num_frames int32 (n), num_video_frames int32 (N).

`texts.json` beside the shards holds every example's texts (sizing token buffers without reading
frames). Each video is decoded once, whatever the number of its entries. A malformed entry or an
unreadable video is skipped, logged and listed in `hra_report.json` beside the dataset (and in the
returned `HraReport`); nothing malformed is fatal unless no example at all is left.

  python -m lift_jax.data.hra --manual_dir data/LiFT --out work/hra [--test_size 1000]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import json
import logging
import os
import re
import time
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lift_jax import files
from lift_jax.data import arrayrecord
from lift_jax.data import video as video_lib
from lift_jax.models.critic import vocabulary
from lift_jax.models.critic.vocabulary import LABELS, NUM_FRAMES, QUESTIONS

log = logging.getLogger(__name__)

NAME = "lift_hra"
SPLITS = ("train", "test")
REPORT_FILE = "hra_report.json"
# Per split, [video_id, dimension, user_text, answer] of every written example: lets a trainer size
# its token buffers without reading (and decoding) the frames.
TEXTS_FILE = "texts.json"
# The names the HF releases and LiFT's datasets_mixture.py use, tried in this order.
HRA_JSON_NAMES = ("LiFT-HRA-data.json", "LiFT-HRA-data-10k.json", "LiFT-HRA-data-20k.json")
VIDGEN_JSON_NAME = "vidgen-data.json"

# "Please identify the <phrase> issues in this video": a fallback when the question text differs.
_QUESTION = re.compile(r"Please identify the ([a-z ]+?) issues in this video", re.IGNORECASE)
_PHRASES = {"semantic consistency": "semantic consistency", "fidelity": "fidelity issues",
            "motion": "motion issues"}


def dimension_keys() -> tuple[str, ...]:
  return vocabulary.QUESTION_KEYS


# ----------------------------------------------------------------------------- entries


class EntryError(ValueError):
  """An entry that does not follow the released format (the message says what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One JSON list and the folder its relative video paths start from.

  `split`: None puts its entries through the train/test split; "train" or "test" sends them all
  to that split (VIDGEN: "train").
  """

  name: str
  json_path: str
  video_root: str
  split: str | None = None


@dataclasses.dataclass(frozen=True)
class HraEntry:
  """One parsed rating (see the module doc for the fields)."""

  source: str
  index: int
  video: str
  caption: str
  dimension: str
  user_text: str
  answer: str
  label: str
  reason: str

  @property
  def key(self) -> str:
    return f"{self.source}-{self.index:08d}"


def parse_answer(answer: str) -> tuple[str, str]:
  """`"Good. No obvious problem."` -> ("Good", "No obvious problem."); EntryError if no label."""
  label, reason = vocabulary.split_answer(answer)
  if label is None:
    raise EntryError(f"answer does not start with Good/Normal/Bad: {answer[:80]!r}")
  return label, reason


def strip_media_tokens(text: str) -> str:
  """VILA's `LazySupervisedDataset` for videos: `<image>`/`<video>` tokens (with their newline)
  removed, the rest kept as is (so `"<video>\\n caption"` keeps its leading space)."""
  for token in ("<image>", "<video>"):
    text = text.replace(token + "\n", "").replace("\n" + token, "").replace(token, "")
  return text


def recognise_question(user_text: str) -> tuple[str, str]:
  """(dimension key, caption) of a human turn (media tokens already removed).

  The released question text is matched first; otherwise "Please identify the <X> issues in this
  video" names the dimension and the caption is what precedes it.
  """
  text = user_text.rstrip()
  for key, question in QUESTIONS.items():
    q = question.strip()
    at = text.find(q)
    if at >= 0:
      return key, text[:at].strip()
  m = _QUESTION.search(text)
  if m and m.group(1).lower().strip() in _PHRASES:
    return _PHRASES[m.group(1).lower().strip()], text[:m.start()].strip()
  raise EntryError(f"no known critic question in the human turn: {text[-120:]!r}")


def parse_entry(entry: Any, *, source: str = "hra", index: int = 0) -> HraEntry:
  """One JSON entry -> HraEntry; EntryError naming the problem when it is malformed."""
  if not isinstance(entry, dict):
    raise EntryError(f"expected an object, got {type(entry).__name__}")
  video = entry.get("video")
  if not isinstance(video, str) or not video.strip():
    raise EntryError("missing or empty 'video' (a path relative to the video folder)")
  conv = entry.get("conversations")
  if not isinstance(conv, list) or len(conv) < 2:
    raise EntryError("'conversations' must be a list [human turn, gpt turn]")
  if len(conv) > 2:
    raise EntryError(f"'conversations' has {len(conv)} turns; a rating has exactly 2")
  for turn, who in zip(conv, ("human", "gpt")):
    if not isinstance(turn, dict) or turn.get("from") != who or not isinstance(turn.get("value"),
                                                                                 str):
      raise EntryError(f"expected a {who!r} turn {{'from': {who!r}, 'value': str}}, got "
                       f"{str(turn)[:80]}")
  user_text = strip_media_tokens(conv[0]["value"].rstrip())
  dimension, caption = recognise_question(user_text)
  if not caption:
    raise EntryError("empty caption before the question")
  answer = conv[1]["value"].rstrip()
  label, reason = parse_answer(answer)
  return HraEntry(source=source, index=index, video=video.strip(), caption=caption,
                  dimension=dimension, user_text=user_text, answer=answer, label=label,
                  reason=reason)


def read_source(src: Source, skipped: list[dict] | None = None) -> list[HraEntry]:
  """Parses every entry of `src.json_path`; malformed ones go to `skipped` (with the reason)."""
  try:
    with open(src.json_path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as err:
    raise ValueError(f"{src.json_path}: cannot read the {src.name} JSON ({err})") from err
  if not isinstance(data, list):
    raise ValueError(f"{src.json_path}: expected a JSON list of entries, got "
                     f"{type(data).__name__}")
  out = []
  for i, entry in enumerate(data):
    try:
      out.append(parse_entry(entry, source=src.name, index=i))
    except EntryError as err:
      log.warning("%s[%d]: skipped: %s", src.json_path, i, err)
      if skipped is not None:
        video = entry.get("video") if isinstance(entry, dict) else None
        skipped.append({"source": src.name, "index": i, "video": str(video),
                        "reason": f"malformed entry: {err}"})
  return out


def find_sources(manual_dir: str, *, vidgen: bool = True) -> list[Source]:
  """The released layout under `manual_dir`: `LiFT-HRA/<LiFT-HRA-data*.json>` (or the JSON right in
  `manual_dir`), and `VIDGEN/vidgen-data.json` when present and `vidgen`."""
  manual_dir = os.path.abspath(manual_dir)
  hra = None
  for folder in (os.path.join(manual_dir, "LiFT-HRA"), manual_dir):
    for name in HRA_JSON_NAMES:
      if os.path.isfile(os.path.join(folder, name)):
        hra = Source("hra", os.path.join(folder, name), folder)
        break
    if hra is None:
      found = sorted(glob.glob(os.path.join(folder, "LiFT-HRA-data*.json")))
      if found:
        hra = Source("hra", found[0], folder)
    if hra is not None:
      break
  if hra is None:
    raise FileNotFoundError(f"{manual_dir}: no LiFT-HRA JSON (looked for {HRA_JSON_NAMES} in "
                            "LiFT-HRA/ and the folder itself); unpack the release there")
  sources = [hra]
  vid = os.path.join(manual_dir, "VIDGEN", VIDGEN_JSON_NAME)
  if vidgen and os.path.isfile(vid):
    sources.append(Source("vidgen", vid, os.path.dirname(vid), split="train"))
  return sources


# ----------------------------------------------------------------------------- split


def split_entries(entries: Sequence[HraEntry], sources: Sequence[Source], *,
                  test_size: float | int = 0.1, seed: int = 0) -> dict[str, list[HraEntry]]:
  """Train/test by video (one video's ratings stay together), seeded.

  `test_size`: an int is a number of entries (the paper: 1000), a float in [0, 1) a fraction of
  the entries of the sources without a fixed split. Whole videos are drawn until the count is met.
  """
  fixed = {s.name: s.split for s in sources}
  for name, split in fixed.items():
    if split not in (None,) + SPLITS:
      raise ValueError(f"source {name!r}: split {split!r}; expected None or one of {SPLITS}")
  out: dict[str, list[HraEntry]] = {s: [] for s in SPLITS}
  groups: dict[tuple[str, str], list[HraEntry]] = collections.OrderedDict()
  for e in entries:
    if fixed.get(e.source) is not None:
      out[fixed[e.source]].append(e)
    else:
      groups.setdefault((e.source, e.video), []).append(e)
  total = sum(len(g) for g in groups.values())
  if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or test_size < 0:
    raise ValueError(f"test_size must be a count (int) or a fraction (float), got {test_size!r}")
  if isinstance(test_size, float):
    if test_size >= 1:
      raise ValueError(f"a fractional test_size must be < 1, got {test_size}")
    want = int(round(test_size * total))
  else:
    want = min(int(test_size), total)
  order = np.random.default_rng(seed).permutation(len(groups))
  keys = list(groups)
  test_keys = set()
  count = 0
  for j in order:
    if count >= want:
      break
    test_keys.add(keys[j])
    count += len(groups[keys[j]])
  for k, g in groups.items():
    out["test" if k in test_keys else "train"].extend(g)
  return out


# ----------------------------------------------------------------------------- frames


def resize_frames_pil(frames: np.ndarray, height: int, width: int, resample: int = 3) -> np.ndarray:
  """uint8 `[F,h,w,3]` -> `[F,height,width,3]` with PIL, as VILA's `image_aspect_ratio="resize"`
  (and `siglip.ImageProcessor`) squashes frames: the same bytes the critic's processor makes."""
  out = []
  for f in frames:
    image = Image.fromarray(np.ascontiguousarray(f)).convert("RGB")
    if image.size != (width, height):
      image = image.resize((width, height), resample=resample)
    out.append(np.asarray(image))
  return np.stack(out)


def load_frames(path: str, *, height: int, width: int, num_frames: int = NUM_FRAMES,
                resample: int = 3) -> tuple[np.ndarray, np.ndarray, int]:
  """(frames uint8 [n,height,width,3], indices, frame count N) of one video, as the critic samples
  them (n = min(N, num_frames), `sample_frame_indices`). VideoReadError when unreadable."""
  n = video_lib.count_frames(path)
  idx = vocabulary.sample_frame_indices(n, num_frames)
  frames = video_lib.read_video(path, idx)
  return resize_frames_pil(frames, height, width, resample), idx.astype(np.int32), n


# ----------------------------------------------------------------------------- TFDS


def features(num_frames: int, height: int, width: int):
  """The `tfds.features.FeaturesDict` of one example (raw-bytes tensors: no TensorFlow needed)."""
  tfds = arrayrecord.tfds()

  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "video_id": text(), "source": text(), "caption": text(), "dimension": text(),
      "dimension_id": tfds.features.Scalar(np.int32), "user_text": text(), "answer": text(),
      "label": text(), "label_id": tfds.features.Scalar(np.int32), "reason": text(),
      # Up to `num_frames` frames: a shorter video keeps its own count (VILA does not pad).
      "frames": tfds.features.Tensor(shape=(None, height, width, 3), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.BYTES),
      "frame_indices": tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                            encoding=tfds.features.Encoding.BYTES),
      "num_frames": tfds.features.Scalar(np.int32),
      "num_video_frames": tfds.features.Scalar(np.int32),
  })


@dataclasses.dataclass
class HraReport:
  """What was written per split and source, and every skipped entry with its reason."""

  written: dict[str, int] = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
  by_source: dict[str, int] = dataclasses.field(default_factory=collections.Counter)
  skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  videos_decoded: int = 0
  seconds: float = 0.0

  def to_json(self) -> dict[str, Any]:
    return {"written": dict(self.written), "by_source": dict(self.by_source),
            "videos_decoded": self.videos_decoded, "num_skipped": len(self.skipped),
            "skipped": list(self.skipped), "seconds": round(self.seconds, 2)}


def _examples(entries: Sequence[HraEntry], roots: dict[str, str], *, num_frames: int, height: int,
              width: int, resample: int, workers: int, report: HraReport, split: str,
              texts: list | None = None, progress=None) -> Iterator[tuple[str, dict]]:
  """(key, example) per readable entry; each video decoded once (a few at a time in threads)."""
  dims = dimension_keys()
  groups: dict[tuple[str, str], list[HraEntry]] = collections.OrderedDict()
  for e in entries:
    groups.setdefault((e.source, e.video), []).append(e)

  def decode(key):
    source, rel = key
    path = os.path.join(roots[source], rel)
    try:
      return load_frames(path, height=height, width=width, num_frames=num_frames,
                         resample=resample), None
    except video_lib.VideoReadError as err:
      return None, err.reason

  keys = list(groups)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    pending = collections.deque()
    ahead = iter(keys)
    for k in ahead:  # a bounded look-ahead keeps at most 2 x workers videos in memory
      pending.append((k, pool.submit(decode, k)))
      if len(pending) >= 2 * max(1, workers):
        break
    while pending:
      key, fut = pending.popleft()
      nxt = next(ahead, None)
      if nxt is not None:
        pending.append((nxt, pool.submit(decode, nxt)))
      decoded, reason = fut.result()
      group = groups[key]
      if progress is not None:
        progress.update(len(group))
      if decoded is None:
        log.warning("skipping %d entr%s of unreadable video %s: %s", len(group),
                    "y" if len(group) == 1 else "ies", os.path.join(roots[key[0]], key[1]), reason)
        report.skipped.extend({"source": e.source, "index": e.index, "video": e.video,
                               "reason": f"unreadable video: {reason}"} for e in group)
        continue
      frames, idx, n = decoded
      report.videos_decoded += 1
      for e in group:
        report.written[split] += 1
        report.by_source[e.source] += 1
        if texts is not None:
          texts.append([e.video, e.dimension, e.user_text, e.answer])
        yield e.key, {
            "video_id": e.video, "source": e.source, "caption": e.caption,
            "dimension": e.dimension, "dimension_id": np.int32(dims.index(e.dimension)),
            "user_text": e.user_text, "answer": e.answer, "label": e.label,
            "label_id": np.int32(LABELS.index(e.label)), "reason": e.reason, "frames": frames,
            "frame_indices": idx, "num_frames": np.int32(len(frames)),
            "num_video_frames": np.int32(n)}


def build_hra(out_dir: str, *, manual_dir: str | None = None,
              sources: Sequence[Source] | None = None, vidgen: bool = True,
              test_size: float | int = 0.1, seed: int = 0, image_size: int | Sequence[int] = 384,
              resample: int = 3, num_frames: int = NUM_FRAMES, workers: int = 2,
              overwrite: bool = False, progress: bool = True) -> HraReport:
  """Parses, splits, decodes and writes LiFT-HRA (+VIDGEN) as an ArrayRecord TFDS dataset.

  `sources` (or `find_sources(manual_dir)`) say where the JSONs and videos are; `image_size`
  ((H, W) or one side) and `resample` are the critic processor's (SigLIP 384 bicubic for 13B,
  InternViT 448 for 40B). Written under `<out_dir>.tmp-*` and renamed into place at the end.
  """
  t0 = time.time()
  # TFDS imported before the decode threads start: while its modules import, its lazy-import
  # hook replaces builtins.__import__ and a relative import in another thread (PIL's, in a
  # frame's tobytes) fails ("Relative import statements not supported").
  arrayrecord.tfds()
  out_dir = files.absolute(out_dir)
  if files.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  if sources is None:
    if manual_dir is None:
      raise ValueError("pass manual_dir (the unpacked release) or sources")
    sources = find_sources(manual_dir, vidgen=vidgen)
  sources = list(sources)
  if len({s.name for s in sources}) != len(sources):
    raise ValueError(f"source names must differ: {[s.name for s in sources]}")
  height, width = ((int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer))
                   else tuple(int(x) for x in image_size))
  report = HraReport()
  entries = []
  for src in sources:
    entries += read_source(src, report.skipped)
  splits = split_entries(entries, sources, test_size=test_size, seed=seed)
  roots = {s.name: s.video_root for s in sources}
  bar = tqdm(total=sum(len(v) for v in splits.values()), desc="decoding HRA videos",
             unit="entry", disable=not progress)
  texts: dict[str, list] = {s: [] for s in SPLITS}
  streams = {s: _examples(splits[s], roots, num_frames=num_frames, height=height, width=width,
                          resample=resample, workers=workers, report=report, split=s,
                          texts=texts[s], progress=bar)
             for s in SPLITS}
  # TFDS has no empty splits: peek at each split's first example and leave out the empty ones.
  firsts = {s: next(streams[s], None) for s in SPLITS}
  firsts = {s: f for s, f in firsts.items() if f is not None}
  if not firsts:
    bar.close()
    raise ValueError(f"no usable entry among {len(entries)} parsed ({len(report.skipped)} skipped:"
                     f" {report.skipped[:3]}); nothing written to {out_dir}")

  def chain(s):
    yield firsts[s]
    yield from streams[s]

  meta = {"sources": [dataclasses.asdict(s) for s in sources], "test_size": test_size,
          "seed": seed, "num_frames": num_frames, "image_size": [height, width],
          "resample": resample, "labels": list(LABELS), "dimensions": list(dimension_keys())}

  def report_text():
    report.seconds = time.time() - t0
    return json.dumps({**report.to_json(), "metadata": meta}, indent=2)

  def texts_text():
    return json.dumps({s: t for s, t in texts.items() if s in firsts}, ensure_ascii=False)

  try:
    arrayrecord.write_arrayrecord(
        out_dir, name=NAME, splits={s: chain(s) for s in firsts},
        description=__doc__.split("\n")[0],
        features=features(num_frames, height, width), metadata=meta,
        extra_files={REPORT_FILE: report_text, TEXTS_FILE: texts_text}, overwrite=overwrite)
  finally:
    bar.close()
  if report.skipped:
    log.warning("skipped %d HRA entr%s (see %s)", len(report.skipped),
                "y" if len(report.skipped) == 1 else "ies", os.path.join(out_dir, REPORT_FILE))
  return report


def open_hra(path: str) -> dict[str, Any]:
  """split -> random-access source (`len`, `[i]` -> dict of numpy arrays and bytes)."""
  return arrayrecord.open_arrayrecord(
      path, what="an HRA dataset",
      how="build one with `python -m lift_jax.data.hra` or tools/train_critic.py")


def hra_metadata(path: str) -> dict[str, Any]:
  """metadata.json of a built dataset (sources, split settings, frame size)."""
  return arrayrecord.dataset_metadata(path)


def hra_texts(path: str) -> dict[str, list[list[str]]]:
  """texts.json: per split, [video_id, dimension, user_text, answer] of every example."""
  file = files.join(path, TEXTS_FILE)
  if not files.isfile(file):
    raise FileNotFoundError(f"{file}: missing (rebuild the dataset with lift_jax.data.hra)")
  return json.loads(files.read_text(file))


def text(value: Any) -> str:
  """A TFDS Text feature as read back (bytes) -> str."""
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description="Build the LiFT-HRA TFDS dataset (ArrayRecord).")
  p.add_argument("--manual_dir", required=True, help="unpacked release: LiFT-HRA/, VIDGEN/")
  p.add_argument("--out", required=True, help="dataset directory to write")
  p.add_argument("--test_size", default="0.1", help="entries in test: a count or a fraction")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--image_size", type=int, default=384, help="critic processor size (40B: 448)")
  p.add_argument("--no_vidgen", action="store_true", help="leave out the VIDGEN add-on")
  p.add_argument("--workers", type=int, default=2, help="videos decoded in parallel")
  p.add_argument("--overwrite", action="store_true")
  a = p.parse_args(argv)
  size = float(a.test_size) if "." in a.test_size else int(a.test_size)
  report = build_hra(a.out, manual_dir=a.manual_dir, vidgen=not a.no_vidgen, test_size=size,
                     seed=a.seed, image_size=a.image_size, workers=a.workers,
                     overwrite=a.overwrite)
  summary = report.to_json()
  summary["skipped"] = summary["skipped"][:20]
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  raise SystemExit(main())

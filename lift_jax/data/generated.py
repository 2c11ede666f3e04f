"""The prepared reward dataset: VAE latent moments + T5 embeddings per video, as TFDS/ArrayRecord.

Each video is decoded and encoded once (LiFT's trainer re-encodes online every step); training
then draws z = mean + σ·ε per step from the stored moments (`lift_jax.data.loaders`).

On disk it is a plain TFDS dataset directory (dataset_info.json, features.json, metadata.json and
ArrayRecord shards) with two splits, "synthetic" and "real". Every array is a `tfds.features.Tensor`
with raw-bytes encoding (no Video/Image features), so it is written and read without TensorFlow:
`open_dataset(dir)` = `tfds.builder_from_directory(dir).as_data_source()`, random access, picklable
for grain workers. One example:

  latent_mean, latent_logvar  [C, f, h, w]   latent_dtype (float32 default; float16/bfloat16)
  text_embeds                 [226, 4096]    embed_dtype (bfloat16 default; float16/float32)
  reward float32, is_real bool, all_good bool, caption str, path str (the source video)

metadata.json holds the VAE `scaling_factor` and the preparation settings.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from lift_jax import files
from lift_jax.data import arrayrecord
from lift_jax.data import video as video_lib
from lift_jax.data.records import RewardRecord

log = logging.getLogger(__name__)

NAME = "lift_latents"
SPLITS = ("synthetic", "real")
DTYPES = ("float32", "float16", "bfloat16")
PREPARE_LOG = "prepare_log.json"

EncodeVideo = Callable[[np.ndarray], tuple[Any, Any]]   # [B,3,F,H,W] in [-1,1] -> (mean, logvar)
EncodeText = Callable[[Sequence[str]], Any]             # prompts -> [B, L, D]


def _np_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r}: expected one of {DTYPES}")
  if name == "bfloat16":
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def features(latent_shape: Sequence[int], text_shape: Sequence[int], latent_dtype: str,
             embed_dtype: str):
  """The `tfds.features.FeaturesDict` of one prepared example."""
  tfds = arrayrecord.tfds()
  raw = tfds.features.Encoding.BYTES
  lat = lambda: tfds.features.Tensor(shape=tuple(latent_shape), dtype=_np_dtype(latent_dtype),
                                     encoding=raw)
  return tfds.features.FeaturesDict({
      "latent_mean": lat(),
      "latent_logvar": lat(),
      "text_embeds": tfds.features.Tensor(shape=tuple(text_shape), dtype=_np_dtype(embed_dtype),
                                          encoding=raw),
      "reward": tfds.features.Scalar(np.float32),
      "is_real": tfds.features.Scalar(np.bool_),
      "all_good": tfds.features.Scalar(np.bool_),
      "caption": tfds.features.Text(),
      "path": tfds.features.Text(),
  })


def _cast(ex: dict, dtypes: dict) -> dict:
  """Arrays to their storage dtypes (TFDS wants the feature dtype exactly)."""
  return {k: np.asarray(v).astype(dtypes[k], copy=False) if k in dtypes else v
          for k, v in ex.items()}


def write_dataset(out_dir: str, examples: dict[str, Iterable[dict]], *,
                  latent_shape: Sequence[int], text_shape: Sequence[int] = (226, 4096),
                  latent_dtype: str = "float32", embed_dtype: str = "bfloat16",
                  metadata: dict | None = None, extra_files: dict[str, Callable[[], str]] | None = None,
                  overwrite: bool = False) -> str:
  """Writes `examples` (split -> iterable of example dicts) as a TFDS ArrayRecord dataset at out_dir.

  Each split given must yield at least one example (TFDS has no empty splits): leave out the others.
  Written atomically by `arrayrecord.write_arrayrecord` (see there for `extra_files` and
  `overwrite`).
  """
  for split in examples:
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}: expected {SPLITS}")
  cast = {"latent_mean": _np_dtype(latent_dtype), "latent_logvar": _np_dtype(latent_dtype),
          "text_embeds": _np_dtype(embed_dtype)}
  streams = {s: ((f"{i:010d}", _cast(ex, cast)) for i, ex in enumerate(it))
             for s, it in examples.items()}
  return arrayrecord.write_arrayrecord(
      out_dir, name=NAME, splits=streams, description=__doc__.split("\n")[0],
      features=features(latent_shape, text_shape, latent_dtype, embed_dtype), metadata=metadata,
      extra_files=extra_files, overwrite=overwrite)


def open_dataset(path: str) -> dict[str, Any]:
  """split -> random-access data source (`len`, `[i]` -> dict of numpy arrays / bytes)."""
  return arrayrecord.open_arrayrecord(path, what="a prepared dataset",
                                      how="write one with tools/prepare_data.py")


def dataset_metadata(path: str) -> dict[str, Any]:
  """metadata.json of a dataset folder ({} if absent): scaling_factor, preparation settings."""
  return arrayrecord.dataset_metadata(path)


# ----------------------------------------------------------------------------- preparation


@dataclasses.dataclass
class ClipOptions:
  """How a video becomes a VAE input clip (`video.prepare_clip`); CogVideoX trains at 49x480x720.
  A longer clip (a real video) takes every (n // num_frames)-th frame, as LiFT's trainer does."""
  num_frames: int = 49
  height: int = 480
  width: int = 720
  frame_sampling: str = "stride"
  resize: str = "squash"


@dataclasses.dataclass
class PrepareReport:
  """What was written and what was skipped (path and reason), for the log and the tool's summary."""
  written: dict[str, int] = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
  skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  def to_json(self) -> dict[str, Any]:
    return {"written": dict(self.written), "num_skipped": len(self.skipped),
            "skipped": list(self.skipped), "seconds": round(self.seconds, 2)}


class _TextCache:
  """Embeds captions in batches and remembers recent ones (a prompt has several videos)."""

  def __init__(self, encode_text: EncodeText, dtype, size: int = 256):
    self.encode_text, self.dtype, self.size = encode_text, dtype, size
    self.cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

  def fill(self, captions: Sequence[str]) -> None:
    todo = list(dict.fromkeys(c for c in captions if c not in self.cache))
    if not todo:
      return
    embeds = np.asarray(self.encode_text(todo))
    if embeds.ndim != 3 or embeds.shape[0] != len(todo):
      raise ValueError(f"encode_text returned shape {embeds.shape} for {len(todo)} prompts; "
                       "expected [B, L, D]")
    for c, e in zip(todo, embeds):
      self.cache[c] = e.astype(self.dtype)
      while len(self.cache) > max(self.size, len(todo)):
        self.cache.popitem(last=False)

  def __getitem__(self, caption: str) -> np.ndarray:
    self.cache.move_to_end(caption)
    return self.cache[caption]


def encode_records(records: Sequence[RewardRecord], encode_video: EncodeVideo,
                   encode_text: EncodeText, *, clip: ClipOptions | None = None,
                   latent_dtype: str = "float32", embed_dtype: str = "bfloat16",
                   text_batch: int = 8, report: PrepareReport | None = None,
                   progress: Any = None, video_batch: int = 1) -> Iterator[tuple[str, dict]]:
  """Yields (split, example) per readable video, in record order, decoding and encoding each once.

  Unreadable videos (`VideoReadError`) and videos shorter than the clip are skipped, logged and
  added to `report.skipped`; encoder errors propagate. Captions are embedded `text_batch` at a time,
  clips `video_batch` at a time (one `encode_video` call on `[B,3,F,H,W]`; the last call may be
  smaller). `progress` (a tqdm bar or None) is advanced once per record.
  """
  clip = clip or ClipOptions()
  report = report if report is not None else PrepareReport()
  want = video_lib.clip_frame_indices(10**9, clip.num_frames, "first").size  # 4k+1 trim
  lat_dt, emb_dt = _np_dtype(latent_dtype), _np_dtype(embed_dtype)
  texts = _TextCache(encode_text, emb_dt, size=max(256, 2 * text_batch, 2 * video_batch))
  shapes: list = []  # the first example's (latent shape, embedding shape)
  pending: list[tuple[RewardRecord, np.ndarray]] = []

  def encode(group):
    mean, logvar = encode_video(np.stack([x for _, x in group]))
    mean, logvar = np.asarray(mean).astype(lat_dt), np.asarray(logvar).astype(lat_dt)
    for (rec, _), m, lv in zip(group, mean, logvar):
      emb = texts[rec.caption]
      if not shapes:
        shapes.append((m.shape, emb.shape))
      elif (m.shape, emb.shape) != shapes[0]:
        raise ValueError(f"{rec.path}: latents {m.shape} / embeddings {emb.shape} differ from "
                         f"the first example's {shapes[0]}")
      split = "real" if rec.is_real else "synthetic"
      report.written[split] += 1
      if progress is not None:
        progress.update(1)
      yield split, {"latent_mean": m, "latent_logvar": lv, "text_embeds": emb,
                    "reward": np.float32(rec.reward), "is_real": bool(rec.is_real),
                    "all_good": bool(rec.all_good), "caption": rec.caption, "path": rec.path}

  for start in range(0, len(records), text_batch):
    chunk = records[start:start + text_batch]
    texts.fill([r.caption for r in chunk])
    for rec in chunk:
      try:
        frames = video_lib.read_video(rec.path)
        if video_lib.clip_frame_indices(len(frames), clip.num_frames,
                                        clip.frame_sampling).size < want:
          raise video_lib.VideoReadError(
              rec.path, f"has {len(frames)} frames; a clip needs {want} (num_frames="
                        f"{clip.num_frames}, trimmed to 4k+1)")
        x = video_lib.prepare_clip(frames, num_frames=clip.num_frames, height=clip.height,
                                   width=clip.width, frame_sampling=clip.frame_sampling,
                                   resize=clip.resize)
      except video_lib.VideoReadError as err:
        log.warning("skipping %s", err)
        report.skipped.append({"path": rec.path, "reason": err.reason})
        if progress is not None:
          progress.update(1)
        continue
      pending.append((rec, x))
      if len(pending) >= video_batch:
        yield from encode(pending)
        pending = []
  if pending:
    yield from encode(pending)


def prepare_reward_dataset(records: Sequence[RewardRecord], out_dir: str, *,
                           encode_video: EncodeVideo, encode_text: EncodeText,
                           scaling_factor: float, clip: ClipOptions | None = None,
                           latent_dtype: str = "float32", embed_dtype: str = "bfloat16",
                           text_batch: int = 8, overwrite: bool = False, progress: bool = True,
                           metadata: dict | None = None, video_batch: int = 1) -> PrepareReport:
  """Encodes every record once and writes the prepared dataset (see the module docstring).

  The encoders are passed in (the tool wires the real VAE and T5; tests pass small stand-ins).
  Bad videos are skipped and counted, never fatal; if none is readable nothing is written.
  """
  clip = clip or ClipOptions()
  out_dir = files.absolute(out_dir)
  if files.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
  report = PrepareReport()
  t0 = time.time()
  bar = tqdm(total=len(records), desc="encoding videos", unit="video", disable=not progress)
  # Records are grouped by split, so each split's generator reads its own records in one pass.
  by_split = {s: [r for r in records if r.is_real == (s == "real")] for s in SPLITS}
  streams = {s: encode_records(by_split[s], encode_video, encode_text, clip=clip,
                               latent_dtype=latent_dtype, embed_dtype=embed_dtype,
                               text_batch=text_batch, report=report, progress=bar,
                               video_batch=video_batch)
             for s in SPLITS}
  # Peek at each split's first example: the feature shapes come from it, and a split with no
  # readable video must be left out (TFDS has no empty splits).
  firsts = {s: next(streams[s], None) for s in SPLITS}
  firsts = {s: f[1] for s, f in firsts.items() if f is not None}
  if not firsts:
    bar.close()
    raise ValueError(f"no readable video among {len(records)} record(s); nothing written to "
                     f"{out_dir}. Skipped: {report.skipped[:5]}")
  first_ex = next(iter(firsts.values()))
  for s, ex in firsts.items():
    if (ex["latent_mean"].shape, ex["text_embeds"].shape) != (
        first_ex["latent_mean"].shape, first_ex["text_embeds"].shape):
      bar.close()
      raise ValueError(f"{ex['path']}: {s} latents {ex['latent_mean'].shape} differ from "
                       f"{first_ex['path']}'s {first_ex['latent_mean'].shape}")

  def split_examples(s):
    yield firsts[s]
    for _, ex in streams[s]:
      yield ex

  meta = {"scaling_factor": float(scaling_factor), "clip": dataclasses.asdict(clip),
          "latent_dtype": latent_dtype, "embed_dtype": embed_dtype, **(metadata or {})}

  def log_text():
    report.seconds = time.time() - t0
    return json.dumps({**report.to_json(), "metadata": meta}, indent=2)

  try:
    write_dataset(out_dir, {s: split_examples(s) for s in firsts},
                  latent_shape=first_ex["latent_mean"].shape,
                  text_shape=first_ex["text_embeds"].shape, latent_dtype=latent_dtype,
                  embed_dtype=embed_dtype, metadata=meta, extra_files={PREPARE_LOG: log_text},
                  overwrite=overwrite)
  finally:
    bar.close()
  report.seconds = time.time() - t0
  if report.skipped:
    log.warning("skipped %d unreadable video(s): %s", len(report.skipped),
                ", ".join(s["path"] for s in report.skipped[:10]))
  return report

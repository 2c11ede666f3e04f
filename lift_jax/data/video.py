"""Video files: H.264 mp4 write/read with PyAV, frame sampling, and training-clip preparation.

Frames on the host are uint8 `[F, H, W, 3]` (what decoders give); the model side is float
`[3, F, H, W]` in [-1, 1] (the VAE's per-sample layout). Every read failure is a `VideoReadError`
that names the file, so a data pipeline can skip and count bad videos instead of dying.
"""

from __future__ import annotations

import fractions
import os
import uuid
from typing import Sequence

import numpy as np

from lift_jax import files

FRAME_SAMPLING = ("first", "uniform", "stride")
RESIZE_MODES = ("squash", "crop")
# libx264 options that make an encode a function of its frames alone (see `write_video`).
X264_DETERMINISTIC = {"x264-params": "asm=0"}


class VideoReadError(OSError):
  """A video that cannot be decoded (missing, corrupt, no video stream, no frames)."""

  def __init__(self, path: str, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


def _av():
  # Imported lazily: PyAV is only needed by the stages that touch video files.
  import av
  return av


# ----------------------------------------------------------------------------- write


def to_uint8_frames(video: np.ndarray) -> np.ndarray:
  """uint8 `[F,H,W,3]` as is, or a float video `[3,F,H,W]` in [-1,1] -> uint8 `[F,H,W,3]`."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    if video.ndim != 4 or video.shape[-1] != 3:
      raise ValueError(f"uint8 video must be [F, H, W, 3], got shape {video.shape}")
    return video
  if not np.issubdtype(video.dtype, np.floating) and video.dtype.kind != "V":
    raise ValueError(f"video must be uint8 [F,H,W,3] or float [3,F,H,W] in [-1,1], got {video.dtype}")
  if video.ndim != 4 or video.shape[0] != 3:
    raise ValueError(f"float video must be [3, F, H, W] in [-1, 1], got shape {video.shape}")
  x = (video.astype(np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(1, 2, 3, 0)


def write_video(path: str, video: np.ndarray, fps: float = 8, *, crf: int = 18,
                preset: str = "medium", deterministic: bool = True) -> str:
  """Writes an H.264 (yuv420p) mp4, atomically: a temporary name in the same folder, then rename
(to a URI: encoded locally, then uploaded whole).

  `video` is uint8 `[F,H,W,3]` or float `[3,F,H,W]` in [-1,1]; H and W must be even (yuv420p).
  8 fps is what CogVideoX exports. Returns `path`.

  `deterministic` turns off libx264's SIMD code (`asm=0`): with it on, the same frames sometimes
  encode to different bytes and decode to pixels up to ~20 levels apart (seen on the demo's 32x48
  videos, one encode in ~10, varying with the process's heap state: a SIMD path reads memory it
  did not write), so two runs of a job would make different videos from identical samples.
  Encoding gets ~3x slower (480x720x49 frames on 2 CPU cores: 3.6 s -> 12 s).
  """
  av = _av()
  frames = to_uint8_frames(video)
  n, h, w, _ = frames.shape
  if n == 0:
    raise ValueError(f"{path}: refusing to write a video with no frames")
  if h % 2 or w % 2:
    raise ValueError(f"{path}: H.264 yuv420p needs even height and width, got {h}x{w}")
  path = os.fspath(path)
  with files.local_output(path) as local:  # the muxer writes local files only
    _write_local(av, local, frames, fps=fps, crf=crf, preset=preset, deterministic=deterministic)
  return path


def _write_local(av, path: str, frames: np.ndarray, *, fps, crf, preset, deterministic) -> None:
  """`frames` encoded to a local mp4 under a temporary name, renamed at the end."""
  h, w = frames.shape[1:3]
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  try:
    with av.open(tmp, "w", format="mp4") as container:
      stream = container.add_stream("libx264", rate=rate)
      stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
      stream.options = {"crf": str(crf), "preset": preset,
                        **(X264_DETERMINISTIC if deterministic else {})}
      for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ----------------------------------------------------------------------------- read


def read_video(path: str, indices: Sequence[int] | None = None, *,
               size: tuple[int, int] | None = None) -> np.ndarray:
  """Decodes a video to uint8 `[F,H,W,3]` RGB (all frames, or the frames at `indices`, in order).

  `size=(H, W)` rescales while decoding (swscale bicubic, like decord's `VideoReader(width, height)`
  that LiFT's trainer uses). Raises `VideoReadError` naming the file if it is missing, corrupt,
  has no video stream or no frames, or if an index is past the last frame.
  """
  av = _av()
  path = os.fspath(path)
  if not files.isfile(path):
    raise VideoReadError(path, "no such file")
  with files.local_copy(path) as local:  # the codec reads local files only
    if os.path.getsize(local) == 0:
      raise VideoReadError(path, "empty file (0 bytes)")
    return _read_local(av, path, local, indices, size)


def _read_local(av, path: str, local: str, indices, size) -> np.ndarray:
  """read_video of the local file `local` (errors name the user's `path`)."""
  wanted = None if indices is None else [int(i) for i in indices]
  if wanted is not None and any(i < 0 for i in wanted):
    raise ValueError(f"{path}: negative frame index in {wanted}")
  keep = None if wanted is None else set(wanted)
  last = None if wanted is None else max(wanted, default=-1)
  frames: dict[int, np.ndarray] | list[np.ndarray] = [] if wanted is None else {}
  count = 0
  try:
    with av.open(local, "r") as container:
      if not container.streams.video:
        raise VideoReadError(path, "no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for i, frame in enumerate(container.decode(stream)):
        count = i + 1
        if keep is None or i in keep:
          if size is not None:
            frame = frame.reformat(width=size[1], height=size[0], interpolation="BICUBIC")
          arr = frame.to_ndarray(format="rgb24")
          if keep is None:
            frames.append(arr)
          else:
            frames[i] = arr
        if last is not None and i >= last:
          break
  except VideoReadError:
    raise
  except (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as err:
    raise VideoReadError(path, f"cannot decode: {type(err).__name__}: {err}") from err
  if count == 0:
    raise VideoReadError(path, "no decodable frames")
  if wanted is None:
    return np.stack(frames)
  missing = sorted(i for i in keep if i not in frames)
  if missing:
    raise VideoReadError(path, f"has {count} frames; frame index {missing[0]} requested")
  return np.stack([frames[i] for i in wanted]) if wanted else np.zeros((0, 0, 0, 3), np.uint8)


def count_frames(path: str) -> int:
  """The number of decodable frames (decodes the stream: container headers can lie)."""
  av = _av()
  path = os.fspath(path)
  if not files.isfile(path):
    raise VideoReadError(path, "no such file")
  try:
    with files.local_copy(path) as local, av.open(local, "r") as container:
      if not container.streams.video:
        raise VideoReadError(path, "no video stream")
      n = sum(1 for _ in container.decode(container.streams.video[0]))
  except VideoReadError:
    raise
  except (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as err:
    raise VideoReadError(path, f"cannot decode: {type(err).__name__}: {err}") from err
  if n == 0:
    raise VideoReadError(path, "no decodable frames")
  return n


# ----------------------------------------------------------------------------- frame choice


def clip_frame_indices(n: int, num_frames: int, mode: str = "first",
                       trim_to_4k1: bool = True) -> np.ndarray:
  """Which of a video's n frames make a training clip of (at most) `num_frames` frames.

  mode "first": the first num_frames; "uniform": linspace(0, n-1, num_frames) rounded to nearest;
  "stride": LiFT's trainer (all frames if n <= num_frames, else every (n // num_frames)-th,
  cut to num_frames). Shorter videos give all their frames. `trim_to_4k1` then drops trailing
  frames down to 4k+1, the lengths the CogVideoX VAE encodes (49 -> 13 latent frames).
  """
  if mode not in FRAME_SAMPLING:
    raise ValueError(f"frame sampling {mode!r}: expected one of {FRAME_SAMPLING}")
  if n < 1 or num_frames < 1:
    raise ValueError(f"need n >= 1 and num_frames >= 1, got n={n}, num_frames={num_frames}")
  if n <= num_frames:
    idx = np.arange(n)
  elif mode == "first":
    idx = np.arange(num_frames)
  elif mode == "uniform":
    idx = np.rint(np.linspace(0, n - 1, num_frames)).astype(int)
  else:
    idx = np.arange(0, n, n // num_frames)[:num_frames]
  if trim_to_4k1:
    idx = idx[:(len(idx) - 1) // 4 * 4 + 1]
  return idx


# ----------------------------------------------------------------------------- clip preparation


def resize_frames(frames: np.ndarray, height: int, width: int, mode: str = "squash") -> np.ndarray:
  """uint8 `[F,h,w,3]` -> uint8 `[F,height,width,3]` (bicubic, swscale).

  "squash": scale straight to the target, as LiFT's trainer does (decord resize, no crop);
  "crop": scale to cover the target keeping the aspect ratio, then center-crop.
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode {mode!r}: expected one of {RESIZE_MODES}")
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
  h, w = frames.shape[1:3]
  if mode == "squash":
    sh, sw = height, width
  else:
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
  if (sh, sw) != (h, w):
    av = _av()
    frames = np.stack([
        av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        .reformat(width=sw, height=sh, interpolation="BICUBIC").to_ndarray(format="rgb24")
        for f in frames])
  top, left = (sh - height) // 2, (sw - width) // 2
  return frames[:, top:top + height, left:left + width]


def prepare_clip(frames: np.ndarray, *, num_frames: int = 49, height: int = 480, width: int = 720,
                 frame_sampling: str = "first", resize: str = "squash",
                 trim_to_4k1: bool = True) -> np.ndarray:
  """Decoded uint8 frames `[F,H,W,3]` -> a VAE input clip, float32 `[3,F',height,width]` in [-1,1].

  Defaults are CogVideoX's training shape (49 frames, 480x720). See `clip_frame_indices` for the
  frame choice and `resize_frames` for the spatial one.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise ValueError(f"frames must be a non-empty [F, H, W, 3] array, got shape {frames.shape}")
  idx = clip_frame_indices(frames.shape[0], num_frames, frame_sampling, trim_to_4k1)
  clip = resize_frames(frames[idx], height, width, resize)
  return (clip.astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)


def load_clip(path: str, **kw) -> np.ndarray:
  """`read_video` then `prepare_clip` (keyword arguments as `prepare_clip`)."""
  return prepare_clip(read_video(path), **kw)

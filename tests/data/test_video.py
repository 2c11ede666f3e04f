"""mp4 write/read round trips, typed errors for bad files, frame sampling and clip preparation."""

import os
import threading

import numpy as np
import pytest

from lift_jax.data import video


def gradient_video(f=9, h=32, w=48):
  """Smooth content (what H.264 keeps well): a ramp per channel, moving over time."""
  t = np.linspace(0, 1, f)[:, None, None]
  y = np.linspace(0, 1, h)[None, :, None]
  x = np.linspace(0, 1, w)[None, None, :]
  chans = [0.5 * t + 0.5 * y + 0 * x, 0.5 * x + 0.3 * t + 0 * y, 0.8 * (x + y) / 2 + 0 * t]
  return (np.stack(chans, -1) * 200 + 20).astype(np.uint8)


def test_uint8_round_trip(tmp_path):
  frames = gradient_video()
  path = str(tmp_path / "sub" / "a.mp4")
  assert video.write_video(path, frames, fps=8) == path
  assert os.listdir(tmp_path / "sub") == ["a.mp4"]  # no temporary file left behind
  back = video.read_video(path)
  assert back.shape == frames.shape and back.dtype == np.uint8
  err = np.abs(back.astype(int) - frames.astype(int))
  assert err.mean() < 4 and np.percentile(err, 99) < 16
  assert video.count_frames(path) == 9


def test_float_video_round_trip_and_fps(tmp_path):
  frames = gradient_video(f=5, h=16, w=24)
  x = (frames.astype(np.float32) / 127.5 - 1).transpose(3, 0, 1, 2)  # [3, F, H, W] in [-1, 1]
  path = str(tmp_path / "b.mp4")
  video.write_video(path, x, fps=12)
  back = video.read_video(path)
  assert back.shape == (5, 16, 24, 3)
  assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
  import av
  with av.open(path) as c:
    s = c.streams.video[0]
    assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
    assert s.average_rate == 12


def test_to_uint8_scaling():
  x = np.array([-1.0, 0.0, 1.0, 2.0], np.float32).reshape(1, 4, 1, 1).repeat(3, 0)
  assert video.to_uint8_frames(x)[:, 0, 0, 0].tolist() == [0, 128, 255, 255]
  with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
    video.to_uint8_frames(np.zeros((4, 3, 8, 8), np.float32))


def test_write_rejects_odd_size_and_leaves_nothing(tmp_path):
  with pytest.raises(ValueError, match="even"):
    video.write_video(str(tmp_path / "odd.mp4"), np.zeros((3, 15, 16, 3), np.uint8))
  assert os.listdir(tmp_path) == []


def test_read_selected_frames_and_resize(tmp_path):
  frames = gradient_video()
  path = video.write_video(str(tmp_path / "a.mp4"), frames)
  full = video.read_video(path)
  picked = video.read_video(path, [8, 0, 3, 3])
  np.testing.assert_array_equal(picked, full[[8, 0, 3, 3]])
  assert video.read_video(path, size=(16, 24)).shape == (9, 16, 24, 3)
  with pytest.raises(video.VideoReadError, match="a.mp4: has 9 frames"):
    video.read_video(path, [9])


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "missing", "not_video"])
def test_bad_files_raise_typed_error_naming_the_file(tmp_path, kind):
  good = video.write_video(str(tmp_path / "good.mp4"), gradient_video())
  bad = str(tmp_path / f"{kind}.mp4")
  if kind == "garbage":
    open(bad, "wb").write(os.urandom(3000))
  elif kind == "empty":
    open(bad, "wb").close()
  elif kind == "truncated":
    data = open(good, "rb").read()
    open(bad, "wb").write(data[:len(data) // 3])
  elif kind == "not_video":
    open(bad, "w").write("{\"a\": 1}\n")
  with pytest.raises(video.VideoReadError) as info:
    video.read_video(bad)
  assert bad in str(info.value) and info.value.path == bad
  assert isinstance(info.value, OSError)


def test_clip_frame_indices():
  assert video.clip_frame_indices(100, 49, "first").tolist() == list(range(49))
  assert video.clip_frame_indices(100, 49, "stride").tolist() == list(range(0, 98, 2))
  uni = video.clip_frame_indices(97, 49, "uniform")
  assert uni.tolist() == list(range(0, 97, 2))
  # Shorter videos give all their frames, cut to 4k+1.
  assert video.clip_frame_indices(30, 49).tolist() == list(range(29))
  assert video.clip_frame_indices(30, 49, trim_to_4k1=False).size == 30
  with pytest.raises(ValueError, match="frame sampling"):
    video.clip_frame_indices(10, 5, "random")


def test_prepare_clip_shapes_range_and_crop():
  frames = gradient_video(f=12, h=32, w=64)
  clip = video.prepare_clip(frames, num_frames=9, height=16, width=16)
  assert clip.shape == (3, 9, 16, 16) and clip.dtype == np.float32
  assert -1 <= clip.min() and clip.max() <= 1
  # Center crop keeps the middle: a frame with a bright center column band.
  f = np.zeros((1, 32, 64, 3), np.uint8)
  f[:, :, 24:40] = 255
  crop = video.resize_frames(f, 16, 16, "crop")
  squash = video.resize_frames(f, 16, 16, "squash")
  assert crop.shape == squash.shape == (1, 16, 16, 3)
  assert crop[0, 8, 8, 0] > 200 and crop[0, 8, 0, 0] < 50   # scaled by 1/2, band at cols 4..12
  assert squash[0, 8, 0, 0] < 50
  same = video.resize_frames(frames, 32, 64)
  np.testing.assert_array_equal(same, frames)


def test_write_video_same_frames_same_bytes(tmp_path):
  """Two runs of a job must write the same mp4 for the same frames. libx264's SIMD code made the
  demo's 32x48 videos differ now and then (decoded pixels up to ~20 levels apart) depending on the
  heap, e.g. while the next batch samples: encode repeatedly while another thread churns memory."""
  rng = np.random.default_rng(0)
  videos = [gradient_video(), rng.integers(0, 256, (9, 32, 48, 3), dtype=np.uint8),
            np.clip(128 + 40 * rng.normal(size=(9, 32, 48, 3)).cumsum(0), 0, 255).astype(np.uint8)]
  stop = threading.Event()

  def churn():
    keep = []
    while not stop.is_set():
      keep = keep[-3:] + [bytearray(int(n)) for n in rng.integers(1, 1 << 18, 8)]

  thread = threading.Thread(target=churn, daemon=True)
  thread.start()
  try:
    for i, frames in enumerate(videos):
      encoded = set()
      for k in range(8):
        path = video.write_video(str(tmp_path / f"{i}_{k}.mp4"), frames)
        with open(path, "rb") as f:
          encoded.add(f.read())
      assert len(encoded) == 1, f"video {i}: {len(encoded)} different encodings of the same frames"
  finally:
    stop.set()
    thread.join()

"""Seconds to write one mp4 with `data.video.write_video`, deterministic (libx264 asm=0) or not.

  python bench/bench_video_encode.py [--frames 49 --height 480 --width 720]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax.data import video  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--frames", type=int, default=49)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=720)
  a = p.parse_args()
  rng = np.random.default_rng(1)
  steps = rng.integers(-3, 4, (a.frames, a.height, a.width, 3))
  frames = np.clip(np.cumsum(steps, axis=0) + 128, 0, 255).astype(np.uint8)
  with tempfile.TemporaryDirectory() as tmp:
    for deterministic in (False, True, False, True):
      start = time.perf_counter()
      video.write_video(os.path.join(tmp, "v.mp4"), frames, deterministic=deterministic)
      print(f"deterministic={deterministic}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
  main()

"""Images -> SigLIP pixel values, as VILA feeds its tower (`image_aspect_ratio="resize"`).

VILA squashes each frame to the processor size with PIL (`image.resize((H, W))`, bicubic), then the
SigLIP image processor resizes (a no-op at that size), rescales by 1/255 and normalizes with
mean = std = 0.5. This module does the same on the host with PIL and NumPy, so the pixels match
transformers' PIL-backend `SiglipImageProcessor` bit for bit; no PyTorch is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from lift_jax.checkpoint.safetensors import CheckpointError

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
  """`proc(images) -> float32 [N, 3, H, W]` from uint8 `[N, h, w, 3]` arrays or PIL images."""

  height: int = 384
  width: int = 384
  image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
  rescale_factor: float = 1 / 255
  resample: int = 3  # PIL.Image.BICUBIC
  do_resize: bool = True
  do_rescale: bool = True
  do_normalize: bool = True

  @classmethod
  def from_config(cls, config: dict[str, Any], image_size: int | None = None) -> "ImageProcessor":
    """From a `preprocessor_config.json` dict (transformers' keys); `image_size` fills a gap."""
    size = config.get("size") or {}
    if isinstance(size, int):
      size = {"height": size, "width": size}
    height = size.get("height", size.get("shortest_edge", image_size or cls.height))
    width = size.get("width", size.get("shortest_edge", image_size or cls.width))
    return cls(height=int(height), width=int(width),
               image_mean=tuple(float(x) for x in config.get("image_mean", cls.image_mean)),
               image_std=tuple(float(x) for x in config.get("image_std", cls.image_std)),
               rescale_factor=float(config.get("rescale_factor", cls.rescale_factor)),
               resample=int(config.get("resample", cls.resample)),
               do_resize=bool(config.get("do_resize", True)),
               do_rescale=bool(config.get("do_rescale", True)),
               do_normalize=bool(config.get("do_normalize", True)))

  @classmethod
  def load(cls, folder: str, image_size: int | None = None) -> "ImageProcessor":
    """Reads `folder/preprocessor_config.json`; without one, SigLIP's defaults at `image_size`."""
    path = os.path.join(folder, PREPROCESSOR_FILE)
    if not os.path.isfile(path):
      size = image_size or cls.height
      return cls(height=size, width=size)
    try:
      with open(path) as f:
        return cls.from_config(json.load(f), image_size)
    except (OSError, json.JSONDecodeError) as err:
      raise CheckpointError(f"{path}: unreadable preprocessor config ({err})") from err

  def to_config(self) -> dict[str, Any]:
    return {"image_processor_type": "SiglipImageProcessor",
            "size": {"height": self.height, "width": self.width},
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor, "resample": self.resample,
            "do_resize": self.do_resize, "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize}

  def _resize(self, image) -> np.ndarray:
    from PIL import Image

    if not isinstance(image, Image.Image):
      arr = np.asarray(image)
      if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [h, w, 3] (RGB), got {arr.dtype} {arr.shape}")
      image = Image.fromarray(arr)
    image = image.convert("RGB")
    if self.do_resize and image.size != (self.width, self.height):
      image = image.resize((self.width, self.height), resample=self.resample)
    return np.asarray(image)

  def __call__(self, images: Sequence[Any] | np.ndarray) -> np.ndarray:
    if isinstance(images, np.ndarray) and images.ndim == 3:
      images = images[None]
    arr = np.stack([self._resize(im) for im in images]).astype(np.float32)  # [N, H, W, 3]
    if self.do_rescale:
      arr = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
    if self.do_normalize:
      mean = np.asarray(self.image_mean, np.float32)
      std = np.asarray(self.image_std, np.float32)
      arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

"""Vision-transformer patches: the geometry a tower config derives from its sizes, and the
stride-p patch split that feeds the patch projection (a Conv2d as a matmul)."""

from __future__ import annotations

import jax
from flax import nnx

from lift_jax.layers.linear import Dense


class PatchGeometry:
  """Mixin for a tower config with `hidden_size`, `num_attention_heads`, `image_size`, `patch_size`."""

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    """Patch tokens (a class token, where the tower has one, comes on top)."""
    return self.grid ** 2

  def validate_geometry(self) -> None:
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                       f"{self.num_attention_heads}")
    # No multiple needed: the stride-p convolution floors (siglip-so400m-patch14-384 sees 27x27
    # patches of the first 378 pixels), and so does `patchify`.
    if self.image_size < self.patch_size:
      raise ValueError(f"image_size={self.image_size} is smaller than patch_size={self.patch_size}")


def patchify(pixel_values: jax.Array, patch: int, channels: int,
             dtype) -> tuple[jax.Array, tuple[int, int]]:
  """`[B,C,H,W] -> [B, gh·gw, C, p, p]` patches in row-major grid order, and the grid (gh, gw).

  Remainder rows and columns are dropped, as a stride-p convolution drops them.
  """
  if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
    raise ValueError(f"pixel_values must be [B, {channels}, H, W], got "
                     f"{tuple(pixel_values.shape)}")
  b, c, h, w = pixel_values.shape
  gh, gw = h // patch, w // patch
  if not gh or not gw:
    raise ValueError(f"pixel_values are {h}x{w}, smaller than one {patch}x{patch} patch")
  x = pixel_values[:, :, :gh * patch, :gw * patch].astype(dtype)
  x = x.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, gh * gw, c, patch, patch), (gh, gw)


def patch_projection(cfg: PatchGeometry, *, rngs: nnx.Rngs) -> Dense:
  """The stride-p Conv2d of a tower config as a matmul over (c, ph, pw) patch features."""
  p, c = cfg.patch_size, cfg.num_channels
  return Dense((c, p, p), cfg.hidden_size, axes=(None, None, None, "embed"), rngs=rngs,
               **cfg.dtypes)

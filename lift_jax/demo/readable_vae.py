"""A "readable" CogVideoX VAE for the demo: latent channels 0-2 are the picture's colour.

A random VAE turns latents into grey blobs whose colour barely follows the latent, and re-encoding
its videos lands somewhere else in latent space, so fine-tuning on re-encoded videos drifts every
model the same way whatever the rewards (bench/RESULTS.md, the demo's world). `make_readable` sets
the weights of an `AutoencoderKLCogVideoX` (same architecture, same files, same loaders) so that

  decode: pixel (R, G, B) at each place = `gain` x latent channels (0, 1, 2) there (nearest
          upsampled: a latent cell is an 8x8 block, a latent frame 4 video frames); the other
          channels are unused;
  encode: latent channels (0, 1, 2) = mean pixel colour of the block / `gain`, the rest 0, with a
          tiny posterior spread (logvar -12),

so `encode(decode(z))` gives back z's colour channels (to ~2e-3) and frame strips show latents.

How, in the upstream layers: every resnet's branch ends in conv2 = 0 (an identity block). The
decoder's output goes through its last SpatialNorm, `GN(f)·conv_y(z) + conv_b(z)`: conv_y = 0 and
conv_b = gain·z + OFFSET, then SiLU (≈ identity that far from 0) and conv_out removes the offset.
The encoder copies (c, −c, L, −L) into each GroupNorm group of its last norm, whose mean is
then 0 and whose spread is ≈ L/√2 whatever the picture, so the normalised c stays proportional
to c (error ≈ c²/2L²); the 2x2 stride-2 convolutions average; the temporal pools are
upstream's own.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from lift_jax.models.cogvideox import AutoencoderKLCogVideoX

COLOURS = 3  # R, G, B
OFFSET = 10.0  # SiLU(x + 10) = x + 10 - 5e-4 on [-1, 1]
LEVEL = 10.0  # the constant channels that pin the encoder's group statistics
LOGVAR = -12.0


def _set(param, value) -> None:
  param[...] = jnp.asarray(value, param[...].dtype)


def _zero(param) -> None:
  _set(param, np.zeros(param[...].shape, np.float32))


def _identity_resnets(blocks) -> None:
  for block in blocks:
    for resnet in block.resnets:
      _zero(resnet.conv2.kernel)
      _zero(resnet.conv2.bias)


def _encoder(vae: AutoencoderKLCogVideoX, gain: float) -> None:
  enc, cfg = vae.encoder, vae.config
  if cfg.block_out_channels[0] < 2 * COLOURS + 2:
    raise ValueError(f"a readable VAE needs block_out_channels[0] >= {2 * COLOURS + 2}, got "
                     f"{cfg.block_out_channels[0]}")
  groups = cfg.norm_num_groups
  width = cfg.block_out_channels[-1]
  if width // groups < 4 or groups < COLOURS:
    raise ValueError(f"a readable VAE needs >= {COLOURS} groups of >= 4 channels in the last "
                     f"encoder block, got {groups} groups of {width} channels")
  _identity_resnets(list(enc.down_blocks) + [enc.mid_block])
  # conv_in, current frame, centre tap: (R, G, B, -R, -G, -B, L, -L, 0...).
  k = np.zeros(enc.conv_in.kernel[...].shape, np.float32)
  b = np.zeros(k.shape[-1], np.float32)
  for c in range(COLOURS):
    k[-1, 1, 1, c, c], k[-1, 1, 1, c, COLOURS + c] = 1.0, -1.0
  b[2 * COLOURS], b[2 * COLOURS + 1] = LEVEL, -LEVEL
  _set(enc.conv_in.kernel, k)
  _set(enc.conv_in.bias, b)
  route = _group_routing(k.shape[-1], width, groups)
  for block in enc.down_blocks:
    for resnet in block.resnets:
      if resnet.conv_shortcut is not None:  # the widening shortcut arranges the groups
        cin, cout = resnet.conv_shortcut.kernel[...].shape[-2:]
        kernel = route if cout == width else np.eye(cin, cout, dtype=np.float32)
        _set(resnet.conv_shortcut.kernel, kernel[None, None, None])
        _zero(resnet.conv_shortcut.bias)
    if block.downsampler is not None:  # 2x2 mean, stride 2
      d = np.zeros(block.downsampler.kernel[...].shape, np.float32)
      for i in range(d.shape[-1]):
        d[0:2, 0:2, i, i] = 0.25
      _set(block.downsampler.kernel, d)
      _zero(block.downsampler.bias)
  size = width // groups
  scale, shift = np.zeros(width, np.float32), np.zeros(width, np.float32)
  scale[[c * size for c in range(COLOURS)]] = LEVEL / np.sqrt(2.0)
  shift[[c * size for c in range(COLOURS)]] = OFFSET
  _set(enc.norm_out.scale, scale)
  _set(enc.norm_out.bias, shift)
  latent = cfg.latent_channels
  k = np.zeros(enc.conv_out.kernel[...].shape, np.float32)
  b = np.zeros(k.shape[-1], np.float32)
  for c in range(COLOURS):
    k[-1, 1, 1, c * size, c] = 1.0 / gain
    b[c] = -OFFSET / gain
  b[latent:] = LOGVAR
  _set(enc.conv_out.kernel, k)
  _set(enc.conv_out.bias, b)


def _group_routing(cin: int, width: int, groups: int) -> np.ndarray:
  """[cin, width]: group g gets (c_g, -c_g, L, -L) (the last groups (L, -L, L, -L))."""
  size = width // groups
  r = np.zeros((cin, width), np.float32)
  for g in range(groups):
    if g < COLOURS:
      r[g, g * size], r[COLOURS + g, g * size + 1] = 1.0, 1.0
    else:
      r[2 * COLOURS, g * size], r[2 * COLOURS + 1, g * size + 1] = 1.0, 1.0
    r[2 * COLOURS, g * size + 2], r[2 * COLOURS + 1, g * size + 3] = 1.0, 1.0
  return r


def _decoder(vae: AutoencoderKLCogVideoX, gain: float) -> None:
  dec = vae.decoder
  _identity_resnets(list(dec.up_blocks) + [dec.mid_block])
  _zero(dec.conv_in.kernel)
  _zero(dec.conv_in.bias)
  norm = dec.norm_out
  _zero(norm.conv_y.kernel)
  _zero(norm.conv_y.bias)
  k = np.zeros(norm.conv_b.kernel[...].shape, np.float32)
  b = np.zeros(k.shape[-1], np.float32)
  for c in range(COLOURS):
    k[0, 0, 0, c, c], b[c] = gain, OFFSET
  _set(norm.conv_b.kernel, k)
  _set(norm.conv_b.bias, b)
  k = np.zeros(dec.conv_out.kernel[...].shape, np.float32)
  b = np.zeros(k.shape[-1], np.float32)
  for c in range(COLOURS):
    k[-1, 1, 1, c, c], b[c] = 1.0, -OFFSET
  _set(dec.conv_out.kernel, k)
  _set(dec.conv_out.bias, b)


def make_readable(vae: AutoencoderKLCogVideoX, gain: float = 1.0) -> AutoencoderKLCogVideoX:
  """Sets `vae`'s weights in place as the module doc says (pixels in [-1, 1]); returns it."""
  if gain <= 0:
    raise ValueError(f"gain={gain}: expected > 0")
  _encoder(vae, gain)
  _decoder(vae, gain)
  return vae

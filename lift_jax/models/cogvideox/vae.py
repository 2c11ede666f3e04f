"""CogVideoX's 3D causal VAE (diffusers `AutoencoderKLCogVideoX`) in Flax NNX.

Public layout as in PyTorch: `mean, logvar = vae.encode(video [B,3,F,H,W] in [-1,1])` gives two
`[B,16,f,h,w]` arrays, `vae.decode(z [B,16,f,h,w]) -> [B,3,F,H,W]` with `z` unscaled (already divided
by `config.scaling_factor`, as diffusers' `vae.decode(z)` expects). Inside everything is channels-last
`[B, T, H, W, C]`, the layout XLA's convolutions want on GPU and TPU.

Numerics follow diffusers exactly: frame chunks of 9, 8, 8, ... (latents 3, 2, 2, ...), each with
its own GroupNorm statistics and a conv cache carried between chunks, and diffusers' spatial tiles
(`enable_tiling`); `vae_runtime.py` runs the chunks and tiles, eagerly or as one traced program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lift_jax import layers
from lift_jax.models.cogvideox.vae_runtime import (is_traced, run_chunk, run_in_chunks,
                                                   run_in_tiles)

# diffusers config keys that must hold the one value CogVideoX uses (the block types are checked
# separately: one entry per block).
_FIXED_DIFFUSERS_KEYS = {"act_fn": "silu", "use_quant_conv": False, "use_post_quant_conv": False}
_IGNORED_DIFFUSERS_KEYS = {"_class_name", "_diffusers_version", "_name_or_path",
                           "_use_default_values", "down_block_types", "up_block_types"}
_DOWN_BLOCK, _UP_BLOCK = "CogVideoXDownBlock3D", "CogVideoXUpBlock3D"
_CONV_DIMS = ("NDHWC", "DHWIO", "NDHWC")


@dataclasses.dataclass(frozen=True)
class CogVideoXVAEConfig(layers.DtypeSettings):
  """Architecture (diffusers `vae/config.json` field names) plus runtime dtypes."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
  latent_channels: int = 16
  layers_per_block: int = 3
  norm_eps: float = 1e-6
  norm_num_groups: int = 32
  temporal_compression_ratio: int = 4
  sample_height: int = 480
  sample_width: int = 720
  scaling_factor: float = 1.15258426
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  invert_scale_latents: bool = False

  @property
  def spatial_compression_ratio(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @property
  def temporal_compress_level(self) -> int:
    return int(np.log2(self.temporal_compression_ratio))

  @classmethod
  def cogvideox_2b(cls, **kw) -> "CogVideoXVAEConfig":
    return cls(**{**dict(scaling_factor=1.15258426), **kw})

  @classmethod
  def cogvideox_5b(cls, **kw) -> "CogVideoXVAEConfig":
    """5B, 5B-I2V and 1.5 share this VAE; only the latent scaling differs from 2B."""
    return cls(**{**dict(scaling_factor=0.7), **kw})

  @classmethod
  def from_diffusers_config(cls, config: dict[str, Any], **runtime) -> "CogVideoXVAEConfig":
    """From a diffusers `vae/config.json` dict; unsupported values raise, naming the field."""
    kwargs = layers.config_fields(config, what="CogVideoX VAE", config_class=cls,
                                  required=("block_out_channels", "latent_channels"),
                                  fixed=_FIXED_DIFFUSERS_KEYS, ignored=_IGNORED_DIFFUSERS_KEYS)
    n = len(kwargs["block_out_channels"])
    for key, kind in (("down_block_types", _DOWN_BLOCK), ("up_block_types", _UP_BLOCK)):
      types = list(config.get(key, [kind] * n))
      if types != [kind] * n:
        raise ValueError(f"config field {key}={types!r} is not supported: expected {n} x {kind!r} "
                         f"(one per block_out_channels entry)")
    ratio = kwargs.get("temporal_compression_ratio", 4)
    if float(ratio) != int(ratio):
      raise ValueError(f"config field temporal_compression_ratio={ratio!r} must be a power of 2")
    kwargs["temporal_compression_ratio"] = int(ratio)
    return cls(**kwargs, **runtime)

  def to_diffusers_config(self) -> dict[str, Any]:
    n = len(self.block_out_channels)
    out: dict[str, Any] = {"_class_name": "AutoencoderKLCogVideoX"}
    for key, value in self.architecture().items():
      out[key] = list(value) if isinstance(value, tuple) else value
    out.update(_FIXED_DIFFUSERS_KEYS)
    out["down_block_types"] = [_DOWN_BLOCK] * n
    out["up_block_types"] = [_UP_BLOCK] * n
    return out

  def validate(self) -> None:
    n = len(self.block_out_channels)
    level = np.log2(self.temporal_compression_ratio)
    if level != int(level) or not 0 <= level <= n - 1:
      raise ValueError(f"temporal_compression_ratio={self.temporal_compression_ratio}: must be a "
                       f"power of 2 of at most 2**{n - 1} (one halving per down block)")
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"block_out_channels {self.block_out_channels}: {c} is not divisible by "
                         f"norm_num_groups={self.norm_num_groups}")


# ----------------------------------------------------------------------------- helpers


def _conv_params(rngs: nnx.Rngs, shape: tuple[int, ...], out_axis: str | None, param_dtype):
  """PyTorch's default conv init, kernel `[*k, I, O]` named (None..., "conv_in", out_axis)."""
  fan_in = math.prod(shape[:-1])
  k_kernel, k_bias = jax.random.split(rngs.params())
  axes = (None,) * (len(shape) - 2) + ("conv_in", out_axis)
  kernel = layers.param(layers.torch_linear_init(k_kernel, shape, fan_in, param_dtype), axes)
  bias = layers.param(layers.torch_linear_init(k_bias, shape[-1:], fan_in, param_dtype),
                      (out_axis,))
  return kernel, bias


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """Source index of each output position under torch's `nearest` interpolation (float32 scale)."""
  i = np.arange(n_out)
  if n_out == n_in:
    return i
  if n_out == 2 * n_in:
    return i >> 1
  scale = np.float32(n_in) / np.float32(n_out)
  return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), n_in - 1)


def _gather(x: jax.Array, index: np.ndarray, axis: int) -> jax.Array:
  """`take` along `axis`, as a repeat (broadcast, fusible) when the index is a plain repeat."""
  n = x.shape[axis]
  if len(index) == n and np.array_equal(index, np.arange(n)):
    return x
  if len(index) % n == 0 and np.array_equal(index, np.repeat(np.arange(n), len(index) // n)):
    return jnp.repeat(x, len(index) // n, axis=axis)
  return jnp.take(x, jnp.asarray(index, jnp.int32), axis=axis)


def _resize_like_spatial_norm(v_BTHWC: jax.Array, size: tuple[int, int, int]) -> jax.Array:
  """Nearest resize of the latent to f's (T, H, W); frame 0 kept apart when T is odd and > 1."""
  t, h, w = v_BTHWC.shape[1:4]
  T, H, W = size
  if T > 1 and T % 2 == 1:
    t_index = np.concatenate([[0], 1 + _nearest_index(t - 1, T - 1)])
  else:
    t_index = _nearest_index(t, T)
  v = _gather(v_BTHWC, t_index, 1)
  v = _gather(v, _nearest_index(h, H), 2)
  return _gather(v, _nearest_index(w, W), 3)


def _temporal_avg_pool(x_BTHWC: jax.Array) -> jax.Array:
  """avg_pool1d(k=2, s=2) over frames (T even)."""
  b, t, h, w, c = x_BTHWC.shape
  x = x_BTHWC.astype(jnp.float32).reshape(b, t // 2, 2, h, w, c)
  return ((x[:, :, 0] + x[:, :, 1]) / 2).astype(x_BTHWC.dtype)


# ----------------------------------------------------------------------------- layers


class GroupNorm(nnx.Module):
  """torch GroupNorm on channels-last input: statistics per sample and group over (T, H, W, C/G),
  computed in fp32 whatever the compute dtype."""

  def __init__(self, channels: int, groups: int, eps: float, *, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.groups, self.eps, self.dtype = groups, eps, dtype
    self.scale = layers.param(jnp.ones((channels,), param_dtype), ("norm",))
    self.bias = layers.param(jnp.zeros((channels,), param_dtype), ("norm",))

  def normalize(self, x: jax.Array) -> jax.Array:
    """The affine-normalized value in fp32 (callers cast, so SpatialNorm can modulate in fp32)."""
    b, c = x.shape[0], x.shape[-1]
    x32 = x.astype(jnp.float32).reshape(b, -1, self.groups, c // self.groups)
    mean = jnp.mean(x32, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 3), keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.normalize(x).astype(self.dtype)


class CausalConv3d(nnx.Module):
  """k³ Conv3d, zero 'same' padding in H and W, causal in time.

  The k-1 frames before a chunk are the previous chunk's last input frames (`cache`), or copies of
  frame 0 at the start of a video. Returns the output and the cache for the next chunk.
  """

  def __init__(self, cin: int, cout: int, *, kernel_size: int = 3, out_axis: str | None = "conv_out",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.k, self.dtype = kernel_size, dtype
    self.kernel, self.bias = _conv_params(rngs, (kernel_size,) * 3 + (cin, cout), out_axis,
                                          param_dtype)

  def __call__(self, x_BTHWC: jax.Array, cache: jax.Array | None):
    k, x = self.k, x_BTHWC.astype(self.dtype)
    before = jnp.repeat(x[:, :1], k - 1, axis=1) if cache is None else cache.astype(self.dtype)
    x = jnp.concatenate([before, x], axis=1)
    new_cache = x[:, x.shape[1] - (k - 1):]
    p = (k - 1) // 2
    y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(self.dtype), (1, 1, 1),
                                     ((0, 0), (p, p), (p, p)), dimension_numbers=_CONV_DIMS)
    return y + self.bias[...].astype(self.dtype), new_cache


class PointwiseConv3d(nnx.Module):
  """1x1x1 Conv3d (a per-position linear map); kernel kept as `[1, 1, 1, I, O]` like the others."""

  def __init__(self, cin: int, cout: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel, self.bias = _conv_params(rngs, (1, 1, 1, cin, cout), "conv_out", param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype),
                   self.kernel[...].astype(self.dtype)[0, 0, 0])
    return y + self.bias[...].astype(self.dtype)


class SpatialNorm3D(nnx.Module):
  """`GN(f) · conv_y(zq) + conv_b(zq)`, zq = the chunk's latent, nearest-resized to f's size.

  conv_y / conv_b are 1x1x1, so they commute with the nearest resize: they run at latent resolution
  and only their outputs are repeated (the same numbers, a fraction of the work and memory).
  diffusers fixes eps at 1e-6 here, whatever `norm_eps` says.
  """

  def __init__(self, f_channels: int, zq_channels: int, groups: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.dtype = dtype
    self.norm_layer = GroupNorm(f_channels, groups, 1e-6, **kw)
    self.conv_y = PointwiseConv3d(zq_channels, f_channels, rngs=rngs, **kw)
    self.conv_b = PointwiseConv3d(zq_channels, f_channels, rngs=rngs, **kw)

  def __call__(self, f_BTHWC: jax.Array, zq_BTHWC: jax.Array) -> jax.Array:
    # conv_y and conv_b as one matmul and one resize (fewer ops to compile; same numbers).
    kernel = jnp.concatenate([self.conv_y.kernel[...], self.conv_b.kernel[...]], -1)[0, 0, 0]
    bias = jnp.concatenate([self.conv_y.bias[...], self.conv_b.bias[...]])
    yb = jnp.einsum("...i,io->...o", zq_BTHWC.astype(self.dtype), kernel.astype(self.dtype))
    yb = yb + bias.astype(self.dtype)
    y, b = jnp.split(_resize_like_spatial_norm(yb, f_BTHWC.shape[1:4]).astype(jnp.float32), 2, -1)
    return (self.norm_layer.normalize(f_BTHWC) * y + b).astype(self.dtype)


class ResnetBlock3D(nnx.Module):
  """norm1 → SiLU → conv1 → norm2 → SiLU → conv2, plus a (1x1x1-projected) residual.

  Encoder blocks use GroupNorm, decoder blocks SpatialNorm3D conditioned on the latent.
  """

  def __init__(self, cin: int, cout: int, cfg: CogVideoXVAEConfig, *, spatial_norm: bool,
               rngs: nnx.Rngs):
    dt = cfg.dtypes
    g = cfg.norm_num_groups
    if spatial_norm:
      self.norm1 = SpatialNorm3D(cin, cfg.latent_channels, g, rngs=rngs, **dt)
      self.norm2 = SpatialNorm3D(cout, cfg.latent_channels, g, rngs=rngs, **dt)
    else:
      self.norm1 = GroupNorm(cin, g, cfg.norm_eps, **dt)
      self.norm2 = GroupNorm(cout, g, cfg.norm_eps, **dt)
    self.spatial_norm = spatial_norm
    self.conv1 = CausalConv3d(cin, cout, rngs=rngs, **dt)
    self.conv2 = CausalConv3d(cout, cout, rngs=rngs, **dt)
    self.conv_shortcut = PointwiseConv3d(cin, cout, rngs=rngs, **dt) if cin != cout else None

  def __call__(self, x, zq, cache):
    cache = cache or {}
    norm = (lambda n, h: n(h, zq)) if self.spatial_norm else (lambda n, h: n(h))
    h = jax.nn.silu(norm(self.norm1, x))
    h, c1 = self.conv1(h, cache.get("conv1"))
    h = jax.nn.silu(norm(self.norm2, h))
    h, c2 = self.conv2(h, cache.get("conv2"))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return h + x.astype(h.dtype), {"conv1": c1, "conv2": c2}


class Downsample3D(nnx.Module):
  """Optional temporal avg-pool by 2 (frame 0 kept alone when T is odd), then a 3x3 stride-2 Conv2d
  per frame after zero padding right and bottom by one."""

  def __init__(self, channels: int, compress_time: bool, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.compress_time, self.dtype = compress_time, dtype
    self.kernel, self.bias = _conv_params(rngs, (3, 3, channels, channels), "conv_out", param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.compress_time:
      if x.shape[1] % 2 == 1:
        rest = x[:, 1:]
        x = jnp.concatenate([x[:, :1]] + ([_temporal_avg_pool(rest)] if rest.shape[1] else []), 1)
      else:
        x = _temporal_avg_pool(x)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype)[None],
                                     (1, 2, 2), ((0, 0), (0, 1), (0, 1)),
                                     dimension_numbers=_CONV_DIMS)
    return y + self.bias[...].astype(self.dtype)


class Upsample3D(nnx.Module):
  """Nearest x2 in H and W (and in T when compressing time: frames 1: doubled, frame 0 kept alone
  when T is odd), then a 3x3 Conv2d per frame."""

  def __init__(self, channels: int, compress_time: bool, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.compress_time, self.dtype = compress_time, dtype
    self.kernel, self.bias = _conv_params(rngs, (3, 3, channels, channels), "conv_out", param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    t = x.shape[1]
    if self.compress_time and t > 1:
      if t % 2 == 1:
        x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
      else:
        x = jnp.repeat(x, 2, axis=1)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype)[None],
                                     (1, 1, 1), ((0, 0), (1, 1), (1, 1)),
                                     dimension_numbers=_CONV_DIMS)
    return y + self.bias[...].astype(self.dtype)


class Block3D(nnx.Module):
  """A down block (encoder) or up/mid block (decoder): resnets, then an optional resampler."""

  def __init__(self, cin: int, cout: int, num_layers: int, cfg: CogVideoXVAEConfig, *,
               spatial_norm: bool, downsample: bool = False, upsample: bool = False,
               compress_time: bool = False, rngs: nnx.Rngs):
    self.resnets = nnx.List([
        ResnetBlock3D(cin if i == 0 else cout, cout, cfg, spatial_norm=spatial_norm, rngs=rngs)
        for i in range(num_layers)])
    dt = cfg.dtypes
    self.downsampler = Downsample3D(cout, compress_time, rngs=rngs, **dt) if downsample else None
    self.upsampler = Upsample3D(cout, compress_time, rngs=rngs, **dt) if upsample else None

  def __call__(self, x, zq, cache):
    new_cache = []
    for i, resnet in enumerate(self.resnets):
      x, c = resnet(x, zq, None if cache is None else cache[i])
      new_cache.append(c)
    if self.downsampler is not None:
      x = self.downsampler(x)
    if self.upsampler is not None:
      x = self.upsampler(x)
    return x, new_cache


class Encoder3D(nnx.Module):
  """video chunk [B,T,H,W,3] -> moments [B,t,h,w,2·latent] (mean ‖ logvar), and the conv cache."""

  def __init__(self, cfg: CogVideoXVAEConfig, *, rngs: nnx.Rngs):
    dt = cfg.dtypes
    ch = cfg.block_out_channels
    self.conv_in = CausalConv3d(cfg.in_channels, ch[0], rngs=rngs, **dt)
    self.down_blocks = nnx.List([
        Block3D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, cfg, spatial_norm=False,
                downsample=i < len(ch) - 1, compress_time=i < cfg.temporal_compress_level,
                rngs=rngs)
        for i in range(len(ch))])
    self.mid_block = Block3D(ch[-1], ch[-1], 2, cfg, spatial_norm=False, rngs=rngs)
    self.norm_out = GroupNorm(ch[-1], cfg.norm_num_groups, 1e-6, **dt)
    self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, rngs=rngs, **dt)

  def __call__(self, x, cache):
    cache = cache or {}
    new = {}
    with jax.named_scope("conv_in"):
      h, new["conv_in"] = self.conv_in(x, cache.get("conv_in"))
    new["down_blocks"] = []
    for i, block in enumerate(self.down_blocks):
      with jax.named_scope(f"down_block_{i}"):
        h, c = block(h, None, cache["down_blocks"][i] if cache else None)
      new["down_blocks"].append(c)
    with jax.named_scope("mid_block"):
      h, new["mid_block"] = self.mid_block(h, None, cache.get("mid_block"))
    with jax.named_scope("out"):
      h = jax.nn.silu(self.norm_out(h))
      h, new["conv_out"] = self.conv_out(h, cache.get("conv_out"))
    return h, new


class Decoder3D(nnx.Module):
  """latent chunk [B,t,h,w,C] -> video [B,T,H,W,3], every norm conditioned on that chunk."""

  def __init__(self, cfg: CogVideoXVAEConfig, *, rngs: nnx.Rngs):
    dt = cfg.dtypes
    ch = tuple(reversed(cfg.block_out_channels))
    self.conv_in = CausalConv3d(cfg.latent_channels, ch[0], rngs=rngs, **dt)
    self.mid_block = Block3D(ch[0], ch[0], 2, cfg, spatial_norm=True, rngs=rngs)
    self.up_blocks = nnx.List([
        Block3D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, cfg, spatial_norm=True,
                upsample=i < len(ch) - 1, compress_time=i < cfg.temporal_compress_level,
                rngs=rngs)
        for i in range(len(ch))])
    self.norm_out = SpatialNorm3D(ch[-1], cfg.latent_channels, cfg.norm_num_groups, rngs=rngs, **dt)
    # RGB output: 3 channels divide no mesh axis, so the kernel's output dim stays unsharded.
    self.conv_out = CausalConv3d(ch[-1], cfg.out_channels, out_axis=None, rngs=rngs, **dt)

  def __call__(self, z, cache):
    cache = cache or {}
    new = {}
    with jax.named_scope("conv_in"):
      h, new["conv_in"] = self.conv_in(z, cache.get("conv_in"))
    with jax.named_scope("mid_block"):
      h, new["mid_block"] = self.mid_block(h, z, cache.get("mid_block"))
    new["up_blocks"] = []
    for i, block in enumerate(self.up_blocks):
      with jax.named_scope(f"up_block_{i}"):
        h, c = block(h, z, cache["up_blocks"][i] if cache else None)
      new["up_blocks"].append(c)
    with jax.named_scope("out"):
      h = jax.nn.silu(self.norm_out(h, z))
      h, new["conv_out"] = self.conv_out(h, cache.get("conv_out"))
    return h, new


# ----------------------------------------------------------------------------- the model


class AutoencoderKLCogVideoX(nnx.Module):
  """`encode(video [B,3,F,H,W]) -> (mean, logvar)` and `decode(z [B,16,f,h,w]) -> [B,3,F,H,W]`.

  Outputs are float32 whatever the compute dtype. Tiling is off by default, as in diffusers;
  `enable_tiling()` turns it on with diffusers' defaults (half the sample size, overlaps 1/6, 1/5).
  """

  def __init__(self, cfg: CogVideoXVAEConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.config = cfg
    self.encoder = Encoder3D(cfg, rngs=rngs)
    self.decoder = Decoder3D(cfg, rngs=rngs)
    # diffusers' constants: other chunk sizes change the output (the VAE was trained with these).
    self.num_sample_frames_batch_size = 8
    self.num_latent_frames_batch_size = 2
    self.use_tiling = False
    self.tile_sample_min_height = cfg.sample_height // 2
    self.tile_sample_min_width = cfg.sample_width // 2
    self.tile_overlap_factor_height = 1 / 6
    self.tile_overlap_factor_width = 1 / 5

  @property
  def tile_latent_min_height(self) -> int:
    return int(self.tile_sample_min_height / self.config.spatial_compression_ratio)

  @property
  def tile_latent_min_width(self) -> int:
    return int(self.tile_sample_min_width / self.config.spatial_compression_ratio)

  def enable_tiling(self, tile_sample_min_height: int | None = None,
                    tile_sample_min_width: int | None = None,
                    tile_overlap_factor_height: float | None = None,
                    tile_overlap_factor_width: float | None = None) -> None:
    """Like diffusers: videos larger than a tile are encoded/decoded in blended spatial tiles."""
    self.use_tiling = True
    self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
    self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
    self.tile_overlap_factor_height = tile_overlap_factor_height or self.tile_overlap_factor_height
    self.tile_overlap_factor_width = tile_overlap_factor_width or self.tile_overlap_factor_width

  def disable_tiling(self) -> None:
    self.use_tiling = False

  # ---- public

  def encode(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """video [B, C_in, F, H, W] in [-1, 1] -> (mean, logvar), each [B, latent, f, h, w] float32."""
    _check_5d("video", "[B, C, F, H, W]", video.shape, self.config.in_channels,
              "in_channels of the VAE config")
    return self._encode(video, traced=is_traced(self, video))

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents z [B, latent, f, h, w] -> video [B, C_out, F, H, W] float32."""
    _check_5d("z", "[B, C, F, H, W]", z.shape, self.config.latent_channels,
              "latent_channels of the VAE config")
    return self._decode(z, traced=is_traced(self, z))

  # ---- bodies

  def _runner(self, part: nnx.Module, frames_per_chunk: int, traced: bool) -> Callable:
    """video/latent [B,T,H,W,C] -> output, chunked; eagerly through a jitted chunk program."""
    if traced:
      return lambda v: run_in_chunks(part, v, frames_per_chunk, scan=True)
    graphdef, state = nnx.split(part)
    step = lambda chunk, cache: run_chunk(graphdef, state, chunk, cache)
    return lambda v: run_in_chunks(step, v, frames_per_chunk, scan=False)

  def _run(self, x: jax.Array, part: nnx.Module, frames_per_chunk: int, traced: bool,
           tile_in: tuple[int, int], tile_out: tuple[int, int]) -> jax.Array:
    """`part` over `x` [B,T,H,W,C] in frame chunks, and in diffusers' blended spatial tiles when
    tiling is on and `x` is larger than `tile_in` (`tile_out`: the same tile on the output side)."""
    run = self._runner(part, frames_per_chunk, traced)
    h, w = x.shape[2:4]
    if not self.use_tiling or (w <= tile_in[1] and h <= tile_in[0]):
      return run(x)
    fh, fw = self.tile_overlap_factor_height, self.tile_overlap_factor_width
    bh, bw = int(tile_out[0] * fh), int(tile_out[1] * fw)
    return run_in_tiles(run, x, tile_in, (int(tile_in[0] * (1 - fh)), int(tile_in[1] * (1 - fw))),
                        (bh, bw), (tile_out[0] - bh, tile_out[1] - bw), stack=traced)

  def _encode(self, video: jax.Array, traced: bool) -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(video).astype(jnp.dtype(self.config.dtype)).transpose(0, 2, 3, 4, 1)
    sample = (self.tile_sample_min_height, self.tile_sample_min_width)
    latent = (self.tile_latent_min_height, self.tile_latent_min_width)
    moments = self._run(x, self.encoder, self.num_sample_frames_batch_size, traced, sample, latent)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    return mean.transpose(0, 4, 1, 2, 3), logvar.transpose(0, 4, 1, 2, 3)

  def _decode(self, z: jax.Array, traced: bool) -> jax.Array:
    x = jnp.asarray(z).astype(jnp.dtype(self.config.dtype)).transpose(0, 2, 3, 4, 1)
    sample = (self.tile_sample_min_height, self.tile_sample_min_width)
    latent = (self.tile_latent_min_height, self.tile_latent_min_width)
    video = self._run(x, self.decoder, self.num_latent_frames_batch_size, traced, latent, sample)
    return video.astype(jnp.float32).transpose(0, 4, 1, 2, 3)


def _check_5d(name: str, layout: str, shape, channels: int, what: str) -> None:
  if len(shape) != 5:
    raise ValueError(f"{name} must be {layout} (PyTorch layout), got shape {tuple(shape)}")
  if shape[1] != channels:
    raise ValueError(f"{name} has {shape[1]} channels (axis 1 of {layout}, shape {tuple(shape)}); "
                     f"expected {channels}, the {what}")
  if min(shape[2:]) < 1:
    raise ValueError(f"{name} has an empty frame/height/width axis: shape {tuple(shape)}")


def sample_latents(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """A draw from the posterior, `mean + exp(logvar / 2) · ε` (diffusers `latent_dist.sample()`)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)

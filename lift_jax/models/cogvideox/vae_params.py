"""diffusers `AutoencoderKLCogVideoX` state-dict keys -> NNX paths, and `load_vae` / `save_vae` /
`export_vae`.

Conv3d weights `[O, I, kt, kh, kw]` become `[kt, kh, kw, I, O]` kernels, Conv2d `[O, I, kh, kw]`
become `[kh, kw, I, O]`, GroupNorm `weight` becomes `scale`. The NNX tree mirrors diffusers' names,
without the `.conv` wrappers of causal convs and with `downsamplers.0` / `upsamplers.0` as
`downsampler` / `upsampler`.
"""

from __future__ import annotations

from lift_jax.checkpoint.spec import ModelSpec
from lift_jax.checkpoint.tables import Rule
from lift_jax.models.cogvideox.vae import AutoencoderKLCogVideoX, CogVideoXVAEConfig


def conv3d(w):
  """torch Conv3d weight [O, I, kt, kh, kw] -> [kt, kh, kw, I, O]."""
  return w.transpose(2, 3, 4, 1, 0)


def conv2d(w):
  """torch Conv2d weight [O, I, kh, kw] -> [kh, kw, I, O]."""
  return w.transpose(2, 3, 1, 0)


def conv3d_inv(k):
  """[kt, kh, kw, I, O] kernel -> torch Conv3d weight [O, I, kt, kh, kw] (export)."""
  return k.transpose(4, 3, 0, 1, 2)


def conv2d_inv(k):
  """[kh, kw, I, O] kernel -> torch Conv2d weight [O, I, kh, kw] (export)."""
  return k.transpose(3, 2, 0, 1)


_INVERSE = {conv3d: conv3d_inv, conv2d: conv2d_inv}


def vae_rules(cfg: CogVideoXVAEConfig) -> list[Rule]:
  """One row per diffusers key (no stacked layers: every block is its own module)."""
  rules: list[Rule] = []

  def conv(src: str, dst: str, transform=conv3d):
    rules.extend([Rule(f"{src}.weight", f"{dst}.kernel", transform, _INVERSE[transform]),
                  Rule(f"{src}.bias", f"{dst}.bias")])

  def group_norm(src: str, dst: str):
    rules.extend([Rule(f"{src}.weight", f"{dst}.scale"), Rule(f"{src}.bias", f"{dst}.bias")])

  def spatial_norm(src: str, dst: str):
    group_norm(f"{src}.norm_layer", f"{dst}.norm_layer")
    conv(f"{src}.conv_y.conv", f"{dst}.conv_y")
    conv(f"{src}.conv_b.conv", f"{dst}.conv_b")

  def resnet(src: str, dst: str, cin: int, cout: int, spatial: bool):
    for norm in ("norm1", "norm2"):
      (spatial_norm if spatial else group_norm)(f"{src}.{norm}", f"{dst}.{norm}")
    conv(f"{src}.conv1.conv", f"{dst}.conv1")
    conv(f"{src}.conv2.conv", f"{dst}.conv2")
    if cin != cout:
      conv(f"{src}.conv_shortcut", f"{dst}.conv_shortcut")

  def block(src: str, cin: int, cout: int, n: int, spatial: bool, resampler: str | None):
    for j in range(n):
      resnet(f"{src}.resnets.{j}", f"{src}.resnets.{j}", cin if j == 0 else cout, cout, spatial)
    if resampler:
      conv(f"{src}.{resampler}s.0.conv", f"{src}.{resampler}", conv2d)

  ch = cfg.block_out_channels
  last = len(ch) - 1
  conv("encoder.conv_in.conv", "encoder.conv_in")
  for i in range(len(ch)):
    block(f"encoder.down_blocks.{i}", ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, False,
          "downsampler" if i < last else None)
  block("encoder.mid_block", ch[-1], ch[-1], 2, False, None)
  group_norm("encoder.norm_out", "encoder.norm_out")
  conv("encoder.conv_out.conv", "encoder.conv_out")

  rch = tuple(reversed(ch))
  conv("decoder.conv_in.conv", "decoder.conv_in")
  block("decoder.mid_block", rch[0], rch[0], 2, True, None)
  for i in range(len(rch)):
    block(f"decoder.up_blocks.{i}", rch[max(i - 1, 0)], rch[i], cfg.layers_per_block + 1, True,
          "upsampler" if i < last else None)
  spatial_norm("decoder.norm_out", "decoder.norm_out")
  conv("decoder.conv_out.conv", "decoder.conv_out")
  return rules


SPEC = ModelSpec(
    kind="cogvideox-vae", config_class=CogVideoXVAEConfig, model_class=AutoencoderKLCogVideoX,
    rules=vae_rules, subfolder="vae", name="the VAE",
    parse=CogVideoXVAEConfig.from_diffusers_config, dump=CogVideoXVAEConfig.to_diffusers_config,
    weights_name="diffusion_pytorch_model")
KIND = SPEC.kind

load_vae = SPEC.load  # (path, *, dtype, param_dtype, mesh, progress)
# Converted checkpoint (kind "cogvideox-vae") out, diffusers `vae/` folder out, config only.
save_vae = SPEC.save
export_vae = SPEC.export
vae_config = SPEC.config

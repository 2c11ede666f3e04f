"""What the real-geometry tests share: the published configs (public facts, written out here and
checked against ../shared/real/configs when the real assets are set), the dtypes the hub ships,
the converter round trip, and the peak memory of the test process."""

from __future__ import annotations

import resource
import time

import torch

from lift_jax.models import convert

# Published CogVideoX transformer configs (diffusers), as the hub's transformer/config.json.
_COMMON = dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64,
               dropout=0.0, flip_sin_to_cos=True, freq_shift=0, max_text_seq_length=226,
               norm_elementwise_affine=True, norm_eps=1e-5, out_channels=16, patch_size=2,
               sample_frames=49, sample_height=60, sample_width=90,
               spatial_interpolation_scale=1.875, temporal_compression_ratio=4,
               temporal_interpolation_scale=1.0, text_embed_dim=4096, time_embed_dim=512,
               timestep_activation_fn="silu")
COGVIDEOX = {
    "cogvideox-2b": dict(_COMMON, in_channels=16, num_attention_heads=30, num_layers=30,
                         use_rotary_positional_embeddings=False),
    "cogvideox-5b": dict(_COMMON, in_channels=16, num_attention_heads=48, num_layers=42,
                         use_rotary_positional_embeddings=True),
    "cogvideox-5b-i2v": dict(_COMMON, in_channels=32, num_attention_heads=48, num_layers=42,
                             use_rotary_positional_embeddings=True,
                             use_learned_positional_embeddings=True),
    "cogvideox1.5-5b": dict(_COMMON, in_channels=16, num_attention_heads=48, num_layers=42,
                            patch_bias=False, patch_size_t=2, sample_frames=81, sample_height=300,
                            sample_width=300, use_learned_positional_embeddings=False,
                            use_rotary_positional_embeddings=True),
    "cogvideox1.5-5b-i2v": dict(_COMMON, in_channels=32, num_attention_heads=48, num_layers=42,
                                ofs_embed_dim=512, patch_bias=False, patch_size_t=2,
                                sample_frames=81, sample_height=300, sample_width=300,
                                use_learned_positional_embeddings=False,
                                use_rotary_positional_embeddings=True),
}
# The hub's storage dtype per release (CogVideoX-2B in fp16, everything else bf16).
HUB_DTYPE = {"cogvideox-2b": torch.float16}
VAE_5B = dict(act_fn="silu", block_out_channels=[128, 256, 256, 512],
              down_block_types=["CogVideoXDownBlock3D"] * 4, force_upcast=True, in_channels=3,
              latent_channels=16, latents_mean=None, latents_std=None, layers_per_block=3,
              norm_eps=1e-6, norm_num_groups=32, out_channels=3, sample_height=480,
              sample_width=720, scaling_factor=0.7, shift_factor=None,
              temporal_compression_ratio=4, up_block_types=["CogVideoXUpBlock3D"] * 4,
              use_post_quant_conv=False, use_quant_conv=False)
# google/t5-v1_1-xxl (CogVideoX's text_encoder/), depth cut by the tests.
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24, vocab_size=32128,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
              tie_word_embeddings=False)
# VILA1.5-13b: Vicuna-1.5-13B (Llama-2-13B) and google/siglip-so400m-patch14-384.
LLAMA2_13B = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                  num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                         num_attention_heads=16, image_size=384, patch_size=14,
                         hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
# VILA1.5-40b: Yi-34B and InternViT-6B-448px-V1-2.
YI_34B = dict(vocab_size=64000, hidden_size=7168, intermediate_size=20480, num_hidden_layers=60,
              num_attention_heads=56, num_key_value_heads=8, max_position_embeddings=4096,
              rms_norm_eps=1e-5, rope_theta=5000000.0, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)
INTERNVIT_6B_448 = dict(hidden_size=3200, intermediate_size=12800, num_hidden_layers=45,
                        num_attention_heads=25, num_channels=3, image_size=448, patch_size=14,
                        hidden_act="gelu", norm_type="rms_norm", layer_norm_eps=1e-6,
                        qk_normalization=True, qkv_bias=False, initializer_factor=0.1,
                        model_type="intern_vit_6b", architectures=["InternVisionModel"])
# Perturbation of the tensors that init leaves constant (norm scales, biases, zero inits).
SCALE = 0.02


def perturb_constants_(module: torch.nn.Module, seed: int = 0, scale: float = SCALE):
  """`reference.perturb_` for real widths: moves every floating tensor that init left constant
  (ones, zeros), so no norm or bias hides; random weights keep their init (noise on them would
  blow real-width activations up, and costs seconds per billion parameters)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(module.state_dict(keep_vars=True).items()):
      if p.dtype.is_floating_point and p.numel() and bool((p == p.reshape(-1)[0]).all()):
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return module


def peak_rss_gb() -> float:
  """The test process's peak resident memory so far (run one case alone to read its own)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class StagePeaks:
  """Peak resident memory per stage of a case (Linux: VmHWM, reset through clear_refs), so the
  report says which step (writing, reference, a loader, the converter) holds the most."""

  def __init__(self):
    self.peaks: dict[str, float] = {}
    self._reset()

  @staticmethod
  def _reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")

  def mark(self, stage: str) -> None:
    with open("/proc/self/status") as f:
      hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    self.peaks[stage] = hwm / 2**20
    self._reset()

  def __str__(self) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in self.peaks.items()) + " GB"


def converted(kind: str, src: str, dst: str) -> str:
  """The converter (tools/convert_checkpoint.py's driver) run on an upstream folder, in fp32."""
  convert.convert(kind, src, dst, dtype="float32", progress=False)
  return dst


def report(name: str, start: float, stages: StagePeaks | None = None, **errors: float) -> None:
  errs = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
  # clear_refs also resets ru_maxrss: with stages, the peak is theirs.
  peak = max(stages.peaks.values()) if stages else peak_rss_gb()
  print(f"\n[real geometry] {name}: rel err {errs}; peak RSS {peak:.2f} GB; "
        f"{time.perf_counter() - start:.1f} s" + (f"; stage peaks: {stages}" if stages else ""))

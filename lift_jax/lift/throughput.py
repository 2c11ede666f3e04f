"""Throughput you can trust: analytic FLOPs of the CogVideoX step, wall-clock step time, MFU.

XLA's `cost_analysis` counts a scanned layer stack once and reports per-device figures, so the
trainer's FLOPs come from the config and the input shapes instead (the usual MFU convention):

  linear layers   2 · (matmul parameters) · (tokens they see)      per forward
                  (video tokens T_v, text tokens S, T = S + T_v; the AdaLN and timestep
                  linears see one row per sample)
  attention       4 · T² · D per layer forward (Q·Kᵀ and P·V, D = heads · head_dim)
  train step      model FLOPs = 3 × forward (backward = 2 × forward)
  remat           the forward parts a policy recomputes in the backward, reported separately:
                  hardware FLOPs = model FLOPs + recompute (MFU uses model FLOPs only)
Norms, activations, RoPE and the optimizer are elementwise and not counted.

Use from a training loop:

  flops = throughput.train_step_flops(model.config, batch["latents"].shape, text_len=226)
  timer = throughput.StepTimer()
  for step in ...:
    state, metrics = trainer.step(state, batch)
    if step % log_every == 0:
      seconds = timer.lap(step, metrics)      # None the first time (that interval holds compile)
      if seconds is not None:
        log(throughput.report(flops, seconds, jax.device_count(), jax.devices()[0].device_kind))
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import jax

# Forward parts of one transformer block, the unit a remat policy recomputes.
BLOCK_PARTS = ("modulation", "qkv", "attention", "attn_out", "mlp")
# Which block parts each remat policy (`layers.stack.REMAT_POLICIES`) recomputes in the backward:
# "full" saves nothing; "dots" saves matmuls without batch dimensions (the linears), so only the
# attention products (batched over heads) are recomputed.
REMAT_RECOMPUTE: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "full": frozenset(BLOCK_PARTS),
    "dots": frozenset({"attention"}),
    # Policies keeping attention's output and/or inputs by name (`layers/remat.py`). Keeping the
    # output counts as sparing attention's forward: true for splash, whose residuals carry the
    # name; XLA attention still recomputes its scores for its own backward.
    "attention": frozenset(BLOCK_PARTS) - {"attention"},
    "qkv": frozenset(BLOCK_PARTS) - {"qkv"},
    "qkv_attention": frozenset(BLOCK_PARTS) - {"qkv", "attention"},
    "dots_attention": frozenset(),
}

# Dense bf16 peak FLOP/s per device (no sparsity), matched against `jax.Device.device_kind`.
# First match wins, so specific names come before general ones. Sources: NVIDIA data sheets
# (H100 SXM 989.4, PCIe 756, NVL 835; H200 = H100 SXM; A100 312) and Cloud TPU pages
# (v4 275, v5e 197, v5p 459, v6e 918 per chip).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h200 nvl", 835e12),
    ("h100", 989.4e12),
    ("h200", 989.4e12),
    ("gh200", 989.4e12),
    ("a100", 312e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
    ("tpu v4", 275e12),
)
# "TPU v5" with nothing after it is how some JAX versions name a v5p chip.
_EXACT_KINDS = {"tpu v5": 459e12}


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device given its `device_kind`, or None when unknown
  (e.g. "cpu"): MFU is then not reported rather than guessed."""
  kind = " ".join(device_kind.lower().split())
  if kind in _EXACT_KINDS:
    return _EXACT_KINDS[kind]
  for pattern, flops in PEAK_BF16_FLOPS:
    if pattern in kind:
      return flops
  return None


# ----------------------------------------------------------------------------- FLOPs


def token_counts(cfg, latents_shape: Sequence[int], text_len: int) -> tuple[int, int]:
  """(video tokens, text tokens) per sample for latents `[B, F, C, H, W]`."""
  if len(latents_shape) != 5:
    raise ValueError(f"latents_shape must be [B, F, C, H, W], got {tuple(latents_shape)}")
  _, f, _, h, w = latents_shape
  p, pt = cfg.patch_size, cfg.patch_size_t or 1
  if f % pt or h % p or w % p:
    raise ValueError(f"latents {tuple(latents_shape)} do not split into patches of "
                     f"{pt}x{p}x{p} (frames x height x width)")
  return (f // pt) * (h // p) * (w // p), int(text_len)


def forward_flops(cfg, latents_shape: Sequence[int], text_len: int) -> dict[str, float]:
  """Matmul FLOPs of one transformer forward for the whole batch, by part.

  Keys: "embed" (patch, text and timestep projections), one key per `BLOCK_PARTS` entry (summed
  over layers) and "head" (final modulation and output projection). `cfg` is a
  `CogVideoXConfig` (any object with its fields).
  """
  b = int(latents_shape[0])
  t_v, s = token_counts(cfg, latents_shape, text_len)
  t = t_v + s
  d, e, p, pt = cfg.inner_dim, cfg.time_embed_dim, cfg.patch_size, cfg.patch_size_t or 1
  patch_in = cfg.in_channels * pt * p * p
  patch_out = cfg.out_channels * pt * p * p
  time_mlp = d * e + e * e
  if cfg.ofs_embed_dim:
    time_mlp += 2 * cfg.ofs_embed_dim * cfg.ofs_embed_dim
  layers = cfg.num_layers
  return {
      "embed": 2.0 * b * (t_v * patch_in * d + s * cfg.text_embed_dim * d + time_mlp),
      "modulation": 2.0 * b * layers * 2 * (e * 6 * d),   # two AdaLN-zero linears per block
      "qkv": 2.0 * b * layers * t * 3 * d * d,
      "attention": 4.0 * b * layers * t * t * d,
      "attn_out": 2.0 * b * layers * t * d * d,
      "mlp": 2.0 * b * layers * t * 2 * d * 4 * d,        # up D->4D and down 4D->D
      "head": 2.0 * b * (e * 2 * d + t_v * d * patch_out),
  }


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one step for the whole (global) batch.

  model: what MFU counts (3 × forward for a train step, 1 × for inference).
  hardware: model + remat recompute (None for a remat policy this module does not know).
  tokens: text + video tokens of the whole batch; video_tokens: video tokens only.
  """

  model: float
  hardware: float | None
  forward: float
  tokens: int
  video_tokens: int
  parts: Mapping[str, float]


def train_step_flops(cfg, latents_shape: Sequence[int], text_len: int,
                     remat: str | None = None) -> StepFlops:
  """One optimizer step on latents `[B, F, C, H, W]` (B = global batch, summed over
  micro-batches) and `text_len` text tokens; `remat` defaults to `cfg.remat`."""
  parts = forward_flops(cfg, latents_shape, text_len)
  fwd = sum(parts.values())
  policy = cfg.remat if remat is None else remat
  recompute = REMAT_RECOMPUTE.get(policy)
  hardware = None if recompute is None else 3 * fwd + sum(parts[k] for k in recompute)
  t_v, s = token_counts(cfg, latents_shape, text_len)
  b = int(latents_shape[0])
  return StepFlops(model=3 * fwd, hardware=hardware, forward=fwd, tokens=b * (t_v + s),
                   video_tokens=b * t_v, parts=parts)


def forward_step_flops(cfg, latents_shape: Sequence[int], text_len: int) -> StepFlops:
  """One inference forward (a sampler step: with CFG pass the doubled batch)."""
  parts = forward_flops(cfg, latents_shape, text_len)
  fwd = sum(parts.values())
  t_v, s = token_counts(cfg, latents_shape, text_len)
  b = int(latents_shape[0])
  return StepFlops(model=fwd, hardware=fwd, forward=fwd, tokens=b * (t_v + s),
                   video_tokens=b * t_v, parts=parts)


def report(flops: StepFlops, seconds_per_step: float, num_devices: int,
           device_kind: str) -> dict[str, float | None]:
  """Throughput figures for logging: tokens/s, achieved TFLOP/s per device, MFU (model FLOPs)
  and hardware FLOPs utilization; MFU entries are None when the device's peak is unknown."""
  if seconds_per_step <= 0 or num_devices < 1:
    raise ValueError(f"seconds_per_step={seconds_per_step} and num_devices={num_devices} must be "
                     "positive")
  per_device = flops.model / seconds_per_step / num_devices
  peak = peak_flops(device_kind)
  hw = None if flops.hardware is None else flops.hardware / seconds_per_step / num_devices
  return {
      "step_time_s": seconds_per_step,
      "tokens_per_s": flops.tokens / seconds_per_step,
      "video_tokens_per_s": flops.video_tokens / seconds_per_step,
      "model_tflops_per_device": per_device / 1e12,
      "mfu": None if peak is None else per_device / peak,
      "hfu": None if peak is None or hw is None else hw / peak,
  }


# ----------------------------------------------------------------------------- wall clock


class StepTimer:
  """Wall-clock seconds per step between logged steps.

  `lap(step, result)` first blocks until `result` (the step's outputs: metrics or state) is
  computed, so the time is the device's, not the dispatch's; it returns the seconds per step
  since the previous lap, or None on the first lap (whose interval holds the compile).
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._last: tuple[int, float] | None = None

  def lap(self, step: int, result: Any = None) -> float | None:
    if result is not None:
      jax.block_until_ready(result)
    now = self._clock()
    previous, self._last = self._last, (int(step), now)
    if previous is None:
      return None
    steps = int(step) - previous[0]
    if steps <= 0:
      raise ValueError(f"step {step} does not come after the last logged step {previous[0]}")
    return (now - previous[1]) / steps

  def reset(self) -> None:
    """Forget the last lap (after a pause: evaluation, checkpointing, a recompile)."""
    self._last = None

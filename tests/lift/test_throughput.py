"""The analytic FLOP count of the CogVideoX step, the peak table and the wall-clock step timer."""

import math
import time

import jax
import jax.extend
import jax.numpy as jnp
import pytest
from flax import nnx

from lift_jax.lift import throughput
from lift_jax.models import cogvideox

# D = 2 heads x 8 = 16, 2 layers, time embedding 8, text width 12, 4 latent channels, patch 2.
TINY = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, time_embed_dim=8,
            text_embed_dim=12, in_channels=4, out_channels=4, max_text_seq_length=5,
            attention_impl="xla")
LATENTS = (2, 3, 4, 4, 6)  # B=2; 3 frames of 4x6 latents -> 3 * 2 * 3 = 18 video tokens a sample
TEXT = 5                   # T = 18 + 5 = 23 tokens a sample


def hand_count_forward() -> int:
  """Multiply-adds of one forward per sample, written out layer by layer; x2 FLOPs, x2 batch."""
  d, e, t_v, s, layers = 16, 8, 18, 5, 2
  t = t_v + s
  macs = (t_v * 16 * d            # patch_proj: 4 channels x 2 x 2 patch -> D
          + s * 12 * d            # text_proj
          + d * e + e * e         # timestep MLP on the D-wide sinusoid
          + layers * (2 * e * 6 * d        # two AdaLN-zero linears
                      + t * 3 * d * d      # q, k, v
                      + 2 * t * t * d      # Q.K^T and P.V
                      + t * d * d          # to_out
                      + t * 2 * d * 4 * d)  # MLP up and down
          + e * 2 * d                       # final AdaLN
          + t_v * d * 16)                   # proj_out: D -> 4 channels x 2 x 2
  return 2 * 2 * macs


def dot_flops(jaxpr) -> int:
  """FLOPs of every dot_general in a jaxpr (scans counted `length` times)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += times * dot_flops(sub)
  return total


def test_forward_flops_equal_hand_count_and_traced_matmuls():
  cfg = cogvideox.CogVideoXConfig(**TINY)
  flops = throughput.train_step_flops(cfg, LATENTS, TEXT)
  assert flops.forward == hand_count_forward() == 755456
  assert flops.model == 3 * 755456
  assert flops.tokens == 2 * 23 and flops.video_tokens == 2 * 18
  # The same count read off the traced model: every matmul it runs, layers unrolled.
  model = cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x, text, t = jnp.ones(LATENTS), jnp.ones((2, TEXT, 12)), jnp.array([1, 500])
  traced = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(x, text, t))(state)
  assert dot_flops(traced.jaxpr) == flops.forward


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_train_step_hardware_flops_match_traced_gradient(remat):
  cfg = cogvideox.CogVideoXConfig(**TINY, remat=remat)
  flops = throughput.train_step_flops(cfg, LATENTS, TEXT)
  parts = flops.parts
  recompute = {"none": 0, "full": sum(parts[k] for k in throughput.BLOCK_PARTS),
               "dots": parts["attention"]}[remat]
  assert flops.hardware == flops.model + recompute
  model = cogvideox.CogVideoXTransformer3D(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x, text, t = jnp.ones(LATENTS), jnp.ones((2, TEXT, 12)), jnp.array([1, 500])
  loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(x, text, t) ** 2)
  traced = dot_flops(jax.make_jaxpr(jax.grad(loss))(state).jaxpr)
  # Autodiff skips the input gradients of the first layers (latents, text and the sinusoid
  # are data): patch_proj, text_proj and the timestep MLP's first linear.
  skipped = 2 * 2 * (18 * 16 * 16 + 5 * 12 * 16 + 16 * 8)
  assert traced == flops.hardware - skipped


def test_unknown_remat_policy_has_no_hardware_count():
  cfg = cogvideox.CogVideoXConfig(**TINY)
  assert throughput.train_step_flops(cfg, LATENTS, TEXT, remat="something_new").hardware is None


def test_full_size_2b_step():
  cfg = cogvideox.CogVideoXConfig.cogvideox_2b()
  flops = throughput.train_step_flops(cfg, (1, 13, 16, 60, 90), 226, remat="full")
  assert flops.video_tokens == 13 * 30 * 45 == 17550 and flops.tokens == 17776
  # attention is ~60% of the 2B forward at this length
  assert 0.55 < flops.parts["attention"] / flops.forward < 0.65
  assert flops.parts["attention"] == 4 * 17776**2 * 1920 * 30


def test_latents_that_do_not_patch_raise():
  cfg = cogvideox.CogVideoXConfig.cogvideox1_5_5b()
  with pytest.raises(ValueError, match="patches"):
    throughput.train_step_flops(cfg, (1, 13, 16, 60, 90), 226)


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989.4e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
    ("cpu", None), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_flops_by_device_kind(kind, peak):
  assert throughput.peak_flops(kind) == peak


def test_report():
  cfg = cogvideox.CogVideoXConfig(**TINY, remat="full")
  flops = throughput.train_step_flops(cfg, LATENTS, TEXT)
  r = throughput.report(flops, 0.5, 2, "TPU v4")
  assert r["tokens_per_s"] == 46 / 0.5
  assert r["model_tflops_per_device"] == pytest.approx(flops.model / 0.5 / 2 / 1e12)
  assert r["mfu"] == pytest.approx(flops.model / 0.5 / 2 / 275e12)
  assert r["hfu"] == pytest.approx(flops.hardware / 0.5 / 2 / 275e12)
  assert throughput.report(flops, 0.5, 1, "cpu")["mfu"] is None


class _Pending:
  """A result whose device work finishes `delay` seconds after dispatch returned."""

  def __init__(self, delay):
    self.delay = delay

  def block_until_ready(self):
    time.sleep(self.delay)
    return self


def test_step_timer_reports_wall_time_of_a_known_step():
  timer = throughput.StepTimer()
  assert timer.lap(0, jnp.zeros(())) is None  # the first interval holds the compile
  for _ in range(2):
    time.sleep(0.1)                           # a step that takes 0.1 s
  seconds = timer.lap(2, None)
  assert 0.1 <= seconds < 0.2
  # dispatch returns at once; the lap waits for the result, so the time is the device's
  start = time.perf_counter()
  seconds = timer.lap(3, {"loss": _Pending(0.3)})
  assert seconds >= 0.3 and time.perf_counter() - start >= 0.3


def test_step_timer_divides_by_steps_between_laps():
  ticks = iter([10.0, 13.0, 14.0, 15.0])
  timer = throughput.StepTimer(clock=lambda: next(ticks))
  assert timer.lap(100) is None
  assert timer.lap(103) == 1.0
  timer.reset()
  assert timer.lap(110) is None
  with pytest.raises(ValueError, match="after"):
    timer.lap(110)

"""fp32 parity of the CogVideoX transformer on an accelerator, against diffusers on the CPU.

The unit tests hold parity on the CPU. On a GPU, XLA may run fp32 matmuls in TF32 unless told
otherwise, so a user's fp32 numbers there can differ from the reference by more than the tests'
1e-5. This measures it at the published widths with the depth cut to 2 blocks (2B: sin-cos
positions; 5B: 3D RoPE), weights perturbed away from init and loaded from a diffusers folder
through `cogvideox.load_transformer`, under the default matmul precision and under
`jax.default_matmul_precision("highest")`. The reference is diffusers in fp32 on the CPU.

  python bench/gpu_parity.py [--frames 3 --height 20 --width 30] [--out parity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import torch  # noqa: E402
from diffusers import CogVideoXTransformer3DModel  # noqa: E402

from lift_jax.models import cogvideox  # noqa: E402
from tests.models.test_cogvideox_transformer import (  # noqa: E402
    make_inputs, run_ours, run_reference)
from tests.reference import perturb_, rel_err, save_sharded  # noqa: E402

PRESETS = {"2b": cogvideox.CogVideoXConfig.cogvideox_2b,
           "5b": cogvideox.CogVideoXConfig.cogvideox_5b}
PRECISIONS = ("default", "highest")


def measure(family: str, frames: int, height: int, width: int, folder: str) -> dict:
  kw = PRESETS[family](num_layers=2).to_diffusers_config()
  torch.manual_seed(0)
  # 0.02: at 1920-3072 wide, the tests' 0.1 would swamp the activations.
  ref = perturb_(CogVideoXTransformer3DModel.from_config(kw).eval(), seed=1, scale=0.02)
  save_sharded(ref, folder, dict(ref.config), shards=2)
  inputs = make_inputs(kw, frames, height, width)
  start = time.perf_counter()
  expected = run_reference(ref, kw, *inputs)
  row = {"latents_FCHW": [frames, kw["in_channels"], height, width], "batch": 2,
         "reference_s": round(time.perf_counter() - start, 2)}
  model = cogvideox.load_transformer(folder)
  for precision in PRECISIONS:
    with jax.default_matmul_precision(None if precision == "default" else precision):
      got = jax.block_until_ready(run_ours(model, *inputs))
    row[precision] = rel_err(got, expected)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--frames", type=int, default=3)
  parser.add_argument("--height", type=int, default=20)
  parser.add_argument("--width", type=int, default=30)
  parser.add_argument("--out", help="JSON file for the results")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "torch": torch.__version__, "metric": "max |ours - ref| / max |ref|", "families": {}}
  with tempfile.TemporaryDirectory() as tmp:
    for family in PRESETS:
      row = measure(family, args.frames, args.height, args.width, os.path.join(tmp, family))
      report["families"][family] = row
      print(f"{family}: " + ", ".join(f"{p} {row[p]:.2e}" for p in PRECISIONS), flush=True)
  print(json.dumps(report, indent=2))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()

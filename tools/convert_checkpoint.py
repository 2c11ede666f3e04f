#!/usr/bin/env python
"""Convert a PyTorch checkpoint folder (diffusers / transformers / VILA layout) to lift_jax's format.

  python tools/convert_checkpoint.py --kind cogvideox-transformer \
      --src CogVideoX-2b/transformer --dst ckpt/cogvideox-2b-transformer [--dtype bfloat16]
  python tools/convert_checkpoint.py --to diffusers --kind cogvideox-transformer \
      --src workdir/export/transformer_ckpt --dst my-finetuned/transformer

Tensors are streamed one at a time onto the devices; the output folder is written under a temporary
name and renamed when complete, so an interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lift_jax import runtime  # noqa: E402
from lift_jax.models import convert as convert_lib  # noqa: E402
from lift_jax.checkpoint.safetensors import CheckpointError  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kind", required=True, choices=sorted(convert_lib.KINDS))
  parser.add_argument("--src", required=True, help="PyTorch checkpoint folder")
  parser.add_argument("--dst", required=True, help="output folder (must not exist unless --overwrite)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                      help="parameter dtype of the converted checkpoint")
  parser.add_argument("--lora", default=None, help="PEFT LoRA adapter folder to merge (critic kinds)")
  parser.add_argument("--to", default="lift_jax", choices=["lift_jax", "diffusers", "pytorch"],
                      help="lift_jax: PyTorch -> converted checkpoint (default); diffusers/pytorch: "
                           "back to the upstream PyTorch layout")
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--compilation_cache", default=None,
                      help="JAX persistent compilation cache dir ('' disables)")
  args = parser.parse_args(argv)
  runtime.setup(args.compilation_cache)
  extra = {"lora": args.lora} if args.lora else {}
  try:
    summary = convert_lib.convert(args.kind, args.src, args.dst, dtype=args.dtype,
                                  overwrite=args.overwrite,
                                  to="lift_jax" if args.to == "lift_jax" else "pytorch", **extra)
  except (CheckpointError, FileExistsError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

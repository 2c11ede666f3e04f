r"""The convert / export stage: PyTorch checkpoint folders (diffusers / transformers / VILA layout)
to lift_jax's format, and back (`--to diffusers`: a fine-tuned transformer for VBench, publishing).

  lift-jax convert --kind cogvideox-transformer \
      --src CogVideoX-2b/transformer --dst ckpt/cogvideox-2b-transformer [--dtype bfloat16]
  lift-jax export --kind cogvideox-transformer \
      --src runs/lift/round1/train/transformer --dst my-finetuned/transformer

Tensors are streamed one at a time onto the devices; the output folder is written under a temporary
name and renamed when complete, so an interrupted conversion leaves nothing behind. Run as several
processes, each converts on its own devices and process 0 alone writes the shared output.
"""

from __future__ import annotations

from absl import flags

from lift_jax import runtime
from lift_jax.models import convert as convert_lib
from lift_jax.stages import cli


def define_flags(to: str = "lift_jax") -> dict:
  return dict(
      kind=flags.DEFINE_enum("kind", None, sorted(convert_lib.KINDS), "model kind",
                             required=True),
      src=flags.DEFINE_string("src", None, "checkpoint folder to read", required=True),
      dst=flags.DEFINE_string("dst", None, "output folder (must not exist unless --overwrite)",
                              required=True),
      dtype=flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                              "parameter dtype of the converted checkpoint"),
      lora=flags.DEFINE_string("lora", None, "PEFT LoRA adapter folder to merge (critic kinds)"),
      to=flags.DEFINE_enum("to", to, ["lift_jax", "diffusers", "pytorch"],
                           "lift_jax: PyTorch -> converted checkpoint; diffusers/pytorch: back to "
                           "the upstream PyTorch layout"),
      overwrite=flags.DEFINE_bool("overwrite", False, "replace an existing --dst"),
      compilation_cache=flags.DEFINE_string("compilation_cache", None, "JAX persistent "
                                            "compilation cache dir ('' disables)"))


def stage(f: dict) -> dict:
  runtime.setup(f["compilation_cache"].value)
  extra = {"lora": f["lora"].value} if f["lora"].value else {}
  return convert_lib.convert(f["kind"].value, f["src"].value, f["dst"].value,
                             dtype=f["dtype"].value, overwrite=f["overwrite"].value,
                             to="lift_jax" if f["to"].value == "lift_jax" else "pytorch", **extra)


def main(argv=None) -> None:
  cli.main(define_flags, stage, argv, errors=(FileExistsError,))


def export_main(argv=None) -> None:
  """`lift-jax export`: the same command, writing the upstream layout by default."""
  cli.main(_define_export_flags, stage, argv, errors=(FileExistsError,))


def _define_export_flags() -> dict:
  return define_flags(to="diffusers")


if __name__ == "__main__":
  main()

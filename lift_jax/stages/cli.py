"""One command line for every stage: `lift-jax <stage> [flags]` (and `python -m
lift_jax.stages.<stage>`, `tools/<stage>.py`), all absl flags with an ml_collections config file
and `--config.a.b=value` overrides.

A stage module defines its flags in `define_flags()` (called only when it runs as the command, so
importing stages as a library defines no flags) and its work in `stage(flags) -> summary`.
`main` starts `jax.distributed` when the job is multi-process, runs the stage, prints its summary
as JSON and turns the errors a user can fix into one line and exit code 2.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from lift_jax import parallel
from lift_jax.checkpoint.safetensors import CheckpointError

# `lift-jax <name>` -> the module under lift_jax.stages that runs it.
COMMANDS = {
    "generate": "generate",      # prompts -> videos + manifest.jsonl
    "score": "score",            # videos -> critic answers -> rewards (scores.jsonl)
    "prepare": "prepare",        # manifest + scores -> training set (latents, embeddings, rewards)
    "train": "train",            # reward-weighted fine-tuning -> checkpoints, transformer
    "report": "report",          # the run's HTML report from the loop's files
    "loop": "loop",              # the whole LiFT loop in one resumable command
    "convert": "convert",        # upstream PyTorch folders -> converted checkpoints
    "export": "convert:export_main",  # converted / fine-tuned -> upstream (diffusers) layout
    "train-critic": "critic_train",   # LoRA SFT of the LiFT-Critic on HRA
    "eval-critic": "critic_eval",     # the critic's label accuracy on HRA (Table 2)
}
_DEFINED: dict = {}  # define_flags -> the names of the flags it defined
# Errors from bad input: one line on stderr, exit code 2 (a traceback would hide the culprit).
USER_ERRORS = (CheckpointError, FileNotFoundError, ValueError, parallel.DistributedSetupError)
# The repository's configs/ folder when running from a checkout (defaults point into it).
SOURCE_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def config_flag(default: str | None, help_text: str, name: str = "config"):
  """`--config=FILE` (+ overrides). `default` (e.g. "configs/lift_2b.py") is used only when the
  file exists (a source checkout); an installed package has no configs/, so --config is needed."""
  if default:
    for candidate in (default, os.path.join(SOURCE_CONFIGS, os.path.basename(default))):
      if os.path.isfile(candidate):
        return config_flags.DEFINE_config_file(name, candidate, help_text)
  return config_flags.DEFINE_config_file(name, None, f"{help_text} (required)")


def main(define_flags: Callable[[], dict], stage: Callable[[dict], dict],
         argv: Sequence[str] | None = None, errors: tuple = (), distributed: bool = True) -> None:
  """Defines the stage's flags (once per process), parses `argv` (default sys.argv) and runs it;
  exits with 0, or 2 for a user error. `distributed=False`: the command only starts other jobs (the
  loop), so it must not hold the coordinator its children need."""
  argv = list(sys.argv if argv is None else argv)
  _config_root_on_path(argv)
  for names in _DEFINED.values():  # a second command in one process (tests)
    for name in names:
      delattr(flags.FLAGS, name)
  _DEFINED.clear()
  if flags.FLAGS.is_parsed():
    flags.FLAGS.unparse_flags()
  before = set(flags.FLAGS)
  # ml_collections registers the --config.<field> overrides it sees in sys.argv when the flag is
  # defined: show it the arguments this run parses.
  saved, sys.argv = sys.argv, argv
  try:
    holders = define_flags()
  finally:
    sys.argv = saved
  _DEFINED[define_flags] = sorted(set(flags.FLAGS) - before)
  # --help lists the key flags of sys.argv[0] and prints __main__'s doc: make both the stage's
  # whichever way it was started (module, tools/ wrapper, lift-jax command).
  for name in _DEFINED[define_flags]:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  doc = sys.modules[define_flags.__module__].__doc__
  if doc:
    sys.modules["__main__"].__doc__ = doc

  if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True)  # exit 0 (absl's own --help exits 1)
    raise SystemExit(0)

  def body(args):
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {args[1:]}")
    config = holders.get("config")
    if config is not None and config.value is None:
      raise app.UsageError("--config=FILE is required (e.g. --config=<clone>/configs/demo.py)")
    try:
      if distributed:
        parallel.initialize_distributed()
      summary = stage(holders)
    except USER_ERRORS + tuple(errors) as err:
      print(f"error: {err}", file=sys.stderr)
      raise SystemExit(2)
    if summary is not None:  # every process: its own share's summary, in its own log
      print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))

  app.run(body, argv=argv)


def _config_root_on_path(argv: Sequence[str]) -> None:
  """Config files import each other (`from configs import lift_2b`): the folder above a --config
  file's folder goes on the import path, so an installed package reads a checkout's configs."""
  for i, arg in enumerate(argv):
    path = arg[len("--config="):] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path and os.path.isfile(path):
      root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
      if root not in sys.path:
        sys.path.append(root)


def lift_jax(argv: Sequence[str] | None = None) -> None:
  """`lift-jax <command> [flags]`: runs one stage (see COMMANDS)."""
  argv = list(sys.argv if argv is None else argv)
  usage = "usage: lift-jax <command> [--help] [flags]\n\ncommands:\n" + "".join(
      f"  {name}\n" for name in COMMANDS)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage)
    raise SystemExit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}\n\n{usage}", file=sys.stderr)
    raise SystemExit(2)
  module_name, _, function = COMMANDS[command].partition(":")
  module = importlib.import_module(f"lift_jax.stages.{module_name}")
  getattr(module, function or "main")([f"lift-jax {command}"] + argv[2:])

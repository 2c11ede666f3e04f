"""One command line: `lift-jax <stage>` answers --help for every stage, names unknown commands, and
a stage's user errors are one line with exit code 2; shard file names."""

import pytest

from lift_jax.stages import cli, shards


def _exit_code(argv, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.lift_jax(argv)
  return exit_.value.code or 0, capsys.readouterr()


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_answers_help(command, capsys):
  code, out = _exit_code(["lift-jax", command, "--help"], capsys)
  assert code == 0
  assert f"lift-jax {command}" in out.out or "lift-jax" in out.out  # the stage's own usage text
  assert "--" in out.out  # and its flags


def test_unknown_command_and_bare_call(capsys):
  code, out = _exit_code(["lift-jax", "fly"], capsys)
  assert code == 2 and "unknown command 'fly'" in out.err
  code, out = _exit_code(["lift-jax"], capsys)
  assert code == 2 and all(name in out.out for name in cli.COMMANDS)


def test_user_error_is_one_line(tmp_path, capsys):
  code, out = _exit_code(["lift-jax", "generate", f"--prompts={tmp_path / 'none.txt'}",
                          f"--out={tmp_path / 'out'}", "--model=/nonexistent"], capsys)
  assert code == 2 and out.err.startswith("error: ")


def test_shard_names():
  assert shards.shard_path("/w/manifest.jsonl", 1, 2) == "/w/manifest-00001-of-00002.jsonl"
  assert shards.shard_path("/w/scores.unparsed.jsonl", 0, 4) == (
      "/w/scores.unparsed-00000-of-00004.jsonl")
  assert shards.shard_path("/w/manifest.jsonl", 0, 1) == "/w/manifest.jsonl"

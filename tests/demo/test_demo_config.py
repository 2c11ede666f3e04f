"""The demo's plan: the runner places the config's extra stages where they say and fills in
their paths; a malformed extra stage is named before any work."""

import os

import pytest

from configs import demo
from lift_jax.lift import runner


def _plan(tmp_path, **changes):
  c = demo.get_config()
  for k, v in changes.items():
    c[k] = v
  run = runner.Run(c, str(tmp_path / "w"))
  run.validate()
  run.resolve_models(create=False)
  return run, run.stages()


def test_demo_stages_in_order_with_paths_filled_in(tmp_path):
  run, plan = _plan(tmp_path)
  names = [s.name for s in plan]
  assert names == ["round1/generate", "rate", "critic_sft", "round1/score", "round1/prepare",
                   "round1/train", "control/train", "eval_base/generate", "eval_base/score",
                   "eval_tuned/generate", "eval_tuned/score", "eval_control/generate",
                   "eval_control/score", "rater_eval", "report"]
  work = str(tmp_path / "w")
  spec = {s["name"]: s for s in run._extra_specs()}
  args = run._expand(spec["critic_sft"]["args"], f"{work}/critic_sft")
  assert f"--config.data.manual_dir={work}/rate" in args
  assert f"--config.data.dir={work}/critic_sft/hra" in args
  assert f"--config.critic.path={run.paths['critic']}" in args
  control = run._expand(spec["control/train"]["args"], f"{work}/control/train")
  assert "--config.loss.mode=plain" in control
  assert f"--config.model.transformer={run.paths['transformer']}" in control
  # The plain control trains exactly as the reward-weighted run does, weights aside.
  assert [a for a in control if a.startswith("--config.") and "loss.mode" not in a
          and "model.transformer" not in a and "data.dir" not in a] == [
              f"--config.{o}" for o in run.config.train.overrides]
  assert run._expand(run.config.models.critic_lora) == f"{work}/critic_sft/adapter"


@pytest.mark.parametrize("bad, message", [
    (dict(name="x", after="nowhere", module="m"), "after='nowhere' is not a stage"),
    (dict(name="x", after="rate", module="m", tool="train.py"), "exactly one of"),
    (dict(name="report", after="rate", module="m"), "is taken"),
    (dict(name="x", after="rate", tool="nope.py"), "no tools/nope.py"),
    (dict(name="x", after="rate", module="m", args=["{nothing}"]), "unknown name"),
])
def test_bad_extra_stage_is_named(tmp_path, bad, message):
  c = demo.get_config()
  stages = list(c.extra_stages) + [bad]
  with pytest.raises(runner.ConfigError, match=message):
    run, plan = _plan(tmp_path, extra_stages=stages)
    run._extra_specs() and [run._expand(s.get("args") or []) for s in run._extra_specs()]


def test_extra_stage_configs_are_found_from_any_working_directory(tmp_path, monkeypatch):
  """The stage configs the demo names relative to the checkout ("configs/critic_13b_sft.py")
  reach each extra stage's command line as files that exist, whatever the working directory."""
  monkeypatch.chdir(tmp_path)
  run, _ = _plan(tmp_path)
  configs = [a.partition("=")[2] for s in run._extra_specs()
             for a in run.extra_stage_args(s, str(tmp_path / "w" / s["name"]))
             if a.startswith("--config=")]
  assert len(configs) == 4 and all(os.path.isfile(p) for p in configs), configs
  assert all(not os.path.isfile(a.partition("=")[2]) for s in demo.get_config().extra_stages
             for a in s.get("args") or () if a.startswith("--config="))  # relative as written

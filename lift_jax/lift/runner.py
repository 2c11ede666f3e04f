"""The LiFT loop as one resumable job: the stages of `tools/lift.py`.

  generate → score → prepare (join rewards, encode latents/embeddings) → train
  → eval_base (held-out prompts, base model) → eval_tuned (held-out prompts, fine-tuned) → report

Each stage runs its module (`python -m lift_jax.stages.generate`, `score`, `prepare`, `train`) in a
child process with the run's Python, writing under `WORKDIR/<stage>/`, and leaves
`WORKDIR/<stage>/DONE.json` when complete. A re-run skips completed stages and resumes an
interrupted one (the tools themselves resume: generate and score skip finished videos, train
restarts from its newest checkpoint). With `rounds: N` the generate → score → prepare → train
stages repeat, each round starting from the previous round's fine-tuned transformer.

`extra_stages` in the config adds stages of its own, each a `python -m MODULE` or a `tools/TOOL`
run with ARGS, placed right after the stage it names (`after`: a stage name such as
"round1/generate", an earlier extra stage, or "start"):

  dict(name="control/train", after="round1/train", tool="train.py", args=[...],
       summary="train_summary.json")   # a JSON file in the stage's folder, copied into DONE.json

Their ARGS, `models.critic_lora` and the `report` block may name {workdir}, {dir} (the stage's own
folder), {pipeline}, {critic}, {base_transformer}, {transformer} (the last round's fine-tuned
one), {prompts}, {eval_prompts} and {seed}. `--stages` selects an extra stage by its name.

λ, the real videos' weight, is the config's `real_weight` alone: prepare stores it as their
reward and training weighs them by it. prepare also writes `data.json`, the scored set in LiFT's
own layout (for its official trainer).

On several hosts the same command runs on each: every stage's child processes form one
jax.distributed job (each host's child finds the others through the environment it inherits), and
only process 0 writes the run's own files (config.json, the demo models, DONE.json, the report).
The next stage's start-up waits for every host, so no host reads what process 0 has not written.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from lift_jax import files
from lift_jax.data import records
from lift_jax.lift import report
from lift_jax.parallel import distributed

# The folder lift_jax is imported from (the child processes import it from there too), and the
# source checkout's root when running from one (relative stage configs may be found there).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(PACKAGE_PARENT, "tools")  # extra stages' scripts (a source checkout)
STAGES = ("generate", "score", "prepare", "train", "eval_base", "eval_tuned", "report")
DONE = "DONE.json"


class ConfigError(ValueError):
  """A run config or its inputs cannot work; raised before any heavy work starts."""


@dataclasses.dataclass
class Stage:
  name: str                       # directory name under the work dir, e.g. "round1/generate"
  kind: str                       # one of STAGES
  run: Callable[[], dict]         # does the work, returns a summary for DONE.json
  needs: Sequence[str] = ()       # files that must exist before it runs (from earlier stages)


def _flags(prefix: str, overrides: Sequence[str] | None) -> list[str]:
  """["model.dtype=float32", ...] -> ["--config.model.dtype=float32", ...]."""
  out = []
  for item in overrides or ():
    if "=" not in item:
      raise ConfigError(f"override {item!r} must look like field=value")
    out.append(f"--{prefix}{item}")
  return out


def _tool(name: str, args: list[str], log_path: str, paths: Sequence[str] = ()) -> None:
  """Runs a stage in a child process, teeing its output to `log_path` (each host its own log:
  log.txt for process 0, log-<i>.txt for the others): `name` is a stage module of
  lift_jax.stages ("generate"), any module ("pkg.mod", `python -m`), or a tools/ script ("x.py",
  source checkout only). `paths` go on the child's import path (the config files' root)."""
  if name.endswith(".py"):
    cmd = [sys.executable, os.path.join(TOOLS, name)] + args
  else:
    cmd = [sys.executable, "-m", name if "." in name else f"lift_jax.stages.{name}"] + args
  index = distributed.process_index_from_env()
  if index:
    log_path = f"{os.path.splitext(log_path)[0]}-{index}.txt"
  files.makedirs(files.parent(log_path))
  path = os.pathsep.join(p for p in (PACKAGE_PARENT, *paths, os.environ.get("PYTHONPATH")) if p)
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
  # A log under a URI is written locally and uploaded when the child ends.
  with files.local_output(log_path) as local_log, open(local_log, "a", encoding="utf-8") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
      log.write(line)
      if not line.startswith("\r") and "%|" not in line:
        sys.stdout.write(f"  {line}")
    code = proc.wait()
  if code:
    raise RuntimeError(f"{' '.join(cmd[1:3])} failed with exit code {code}; see {log_path}")


def _module(module: str, args: list[str], log_path: str) -> None:
  """Runs `python -m module` in a child process, like `_tool`."""
  _tool(module, args, log_path)


def _mean_reward(scores: str) -> float | None:
  rewards = [r["reward"] for r in records.read_jsonl(scores, missing_ok=True)
             if r.get("reward") is not None]
  return sum(rewards) / len(rewards) if rewards else None


class Run:
  """The stages of one config in one work dir."""

  def __init__(self, config, workdir: str, config_file: str | None = None):
    self.config = config
    self.workdir = files.absolute(workdir)
    # Relative stage configs ("configs/lift_5b.py") are looked up from the working directory,
    # then beside the run config (its folder and the folder above), then in the source checkout.
    here = os.path.dirname(os.path.abspath(config_file)) if config_file else None
    self.config_roots = [os.getcwd()] + ([os.path.dirname(here), here] if here else []) + [
        PACKAGE_PARENT]
    self.primary = distributed.process_index_from_env() == 0
    # Config files import each other as `configs.<name>`: their root goes on the children's path.
    self.import_paths = [os.path.dirname(here)] if here else []
    self.paths: dict[str, str] = {}
    # A run may create its own models (the demo's tiny ones): `model_factory.module` names a
    # module with `make_models(root, seed, config)` and `model_paths(root)`, each giving at least
    # {"pipeline", "critic"}; `model_factory.settings` is its config.
    factory = config.get("model_factory")
    self.factory = importlib.import_module(factory.module) if factory else None

  # --------------------------------------------------------------------- config and inputs

  def validate(self) -> None:
    c = self.config
    rounds = int(c.get("rounds", 1))
    if rounds < 1:
      raise ConfigError(f"rounds must be ≥ 1, got {rounds}")
    for key in ("prompts", "eval_prompts"):
      path = c.get(key)
      if not path:
        raise ConfigError(f"config.{key} is required (a text file, one prompt per line)")
      if not os.path.isfile(path):
        raise ConfigError(f"config.{key}: prompt file {path} does not exist")
      with open(path, encoding="utf-8") as f:
        if not any(line.strip() and not line.lstrip().startswith("#") for line in f):
          raise ConfigError(f"config.{key}: prompt file {path} holds no prompt")
    for key in ("generate", "score", "train"):
      sub = c[key].get("config")
      if sub and self.stage_config(sub) is None:
        raise ConfigError(f"config.{key}.config: {sub} does not exist (looked in "
                          f"{', '.join(self.config_roots)})")
    self._check_extra_stages()
    if c.get("real") and not os.path.isfile(c.real):
      raise ConfigError(f"config.real: {c.real} does not exist")
    if any(o.split("=")[0].strip() == "loss.real_weight" for o in c.train.get("overrides") or ()):
      raise ConfigError("config.train.overrides sets loss.real_weight: λ is config.real_weight "
                        "(prepare stores it with the real videos, and training reads it there)")
    if self.factory is None:
      for key in ("pipeline", "critic"):
        path = c.models.get(key)
        if not path or not os.path.exists(path):
          raise ConfigError(f"config.models.{key}: {path!r} does not exist")

  def stage_config(self, path: str) -> str | None:
    """A stage's config file as an absolute path, or None when not found."""
    for root in ([""] if os.path.isabs(path) else self.config_roots):
      candidate = os.path.join(root, path)
      if os.path.isfile(candidate):
        return os.path.abspath(candidate)
    return None

  def _extra_specs(self) -> list[dict]:
    return [dict(spec) for spec in (self.config.get("extra_stages") or ())]

  def _check_extra_stages(self) -> None:
    names = set()
    for i, spec in enumerate(self._extra_specs()):
      where = f"config.extra_stages[{i}]"
      if not spec.get("name") or not spec.get("after"):
        raise ConfigError(f"{where}: needs a name and an 'after' (the stage it follows)")
      if bool(spec.get("module")) == bool(spec.get("tool")):
        raise ConfigError(f"{where} ({spec['name']}): give exactly one of 'module' or 'tool'")
      if spec.get("tool") and not os.path.isfile(os.path.join(TOOLS, spec["tool"])):
        raise ConfigError(f"{where} ({spec['name']}): no tools/{spec['tool']}")
      if spec["name"] in names or spec["name"] in STAGES:
        raise ConfigError(f"{where}: stage name {spec['name']!r} is taken")
      names.add(spec["name"])

  def _vars(self, stage_dir: str = "") -> dict[str, str]:
    """What extra stages' args, `models.critic_lora` and `report` may name (see the module doc)."""
    c = self.config
    rounds = int(c.get("rounds", 1))
    return {"workdir": self.workdir, "dir": stage_dir, "pipeline": self.paths["pipeline"],
            "critic": self.paths["critic"], "base_transformer": self.paths["transformer"],
            "transformer": os.path.join(self._dir(f"round{rounds}/train"), "transformer"),
            "prompts": c.prompts, "eval_prompts": c.eval_prompts, "seed": str(c.get("seed", 0))}

  def _expand(self, value, stage_dir: str = ""):
    """`value` (a string, or lists/dicts of them) with {workdir}-style names filled in."""
    if isinstance(value, str):
      try:
        return value.format_map(self._vars(stage_dir))
      except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{value!r}: unknown name {err} (known: "
                          f"{', '.join(sorted(self._vars()))})") from err
    if isinstance(value, (list, tuple)):
      return [self._expand(v, stage_dir) for v in value]
    if hasattr(value, "items"):
      return {k: self._expand(v, stage_dir) for k, v in value.items()}
    return value

  def resolve_models(self, create: bool) -> None:
    """Model paths. Models made by the config's `model_factory` (the demo's tiny ones) live under
    WORKDIR/assets; `create` builds them once every input check has passed."""
    c = self.config
    if self.factory is not None:
      root = os.path.join(self.workdir, "assets")
      if create and self.primary:  # the other hosts' first stage waits for process 0's
        self.factory.make_models(
            root, seed=c.get("seed", 0),
            config={**c.model_factory.settings.to_dict(), "prompts": [c.prompts, c.eval_prompts]})
      made = self.factory.model_paths(root)
      self.paths.update(pipeline=made["pipeline"], critic=made["critic"])
    else:
      self.paths.update(pipeline=c.models.pipeline, critic=c.models.critic)
    self.paths["transformer"] = os.path.join(self.paths["pipeline"], "transformer")

  # --------------------------------------------------------------------- stage bodies

  def _dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def _generate(self, name: str, prompts: str, transformer: str, seed: int) -> dict:
    c, out = self.config, self._dir(name)
    args = [f"--config={self.stage_config(c.generate.config)}", f"--prompts={prompts}",
            f"--out={out}", f"--model={self.paths['pipeline']}",
            f"--config.model.transformer={transformer}",
            f"--config.seed={seed}", "--noprogress"]
    _tool("generate", args + _flags("config.", c.generate.get("overrides")),
          os.path.join(out, "log.txt"), self.import_paths)
    return {"manifest": os.path.join(out, "manifest.jsonl")}

  def _score(self, name: str, manifest: str) -> dict:
    c, out = self.config, self._dir(name)
    scores = os.path.join(out, "scores.jsonl")
    args = [f"--config={self.stage_config(c.score.config)}", f"--manifest={manifest}",
            f"--out={scores}", f"--critic={self.paths['critic']}", "--noprogress"]
    if c.score.get("mode"):
      args.append(f"--mode={c.score.mode}")
    if c.models.get("critic_lora"):
      args.append(f"--lora={self._expand(c.models.critic_lora)}")
    _tool("score", args + _flags("config.", c.score.get("overrides")),
          os.path.join(out, "log.txt"), self.import_paths)
    return {"scores": scores, "mean_reward": _mean_reward(scores)}

  def _prepare(self, name: str, manifest: str, scores: str) -> dict:
    c, out = self.config, self._dir(name)
    dataset = os.path.join(out, "dataset")
    args = [f"--manifest={manifest}", f"--scores={scores}", f"--out={dataset}", "--overwrite",
            f"--model={self.paths['pipeline']}", "--noprogress",
            f"--export_data_json={os.path.join(out, 'data.json')}"]
    if c.get("real"):
      args += [f"--real={c.real}", f"--config.real_weight={c.get('real_weight', 1.0)}"]
    args += _flags("config.", c.prepare.get("args"))
    _tool("prepare", args, os.path.join(out, "log.txt"), self.import_paths)
    return {"dataset": dataset, "data_json": os.path.join(out, "data.json")}

  def _train(self, name: str, dataset: str, transformer: str) -> dict:
    c, out = self.config, self._dir(name)
    args = [f"--config={self.stage_config(c.train.config)}", f"--workdir={out}",
            f"--config.model.transformer={transformer}", f"--config.data.dir={dataset}"]
    _tool("train", args + _flags("config.", c.train.get("overrides")),
          os.path.join(out, "log.txt"), self.import_paths)
    summary = files.read_json(os.path.join(out, "train_summary.json"), "the trainer's summary")
    if "transformer" not in summary:
      raise RuntimeError(f"{name}: training stopped at step {summary.get('steps')} of "
                         f"{summary.get('num_steps')} (preempted?); re-run to resume")
    return summary

  def extra_stage_args(self, spec: dict, out: str) -> list[str]:
    """An extra stage's command line: names filled in, a relative --config=FILE looked up as
    the loop's own stage configs are (so a run config works from any working directory)."""
    args = [str(a) for a in self._expand(list(spec.get("args") or ()), out)]
    return [f"--config={self.stage_config(a[9:]) or a[9:]}" if a.startswith("--config=") else a
            for a in args]

  def _extra(self, spec: dict) -> dict:
    out = self._dir(spec["name"])
    files.makedirs(out)
    args = self.extra_stage_args(spec, out)
    log = os.path.join(out, "log.txt")
    if spec.get("module"):
      _module(spec["module"], args, log)
    else:
      _tool(spec["tool"], args, log)
    summary = os.path.join(out, spec["summary"]) if spec.get("summary") else None
    return files.read_json(summary, "the stage's summary", missing_ok=True)

  def _report(self) -> dict:
    if not self.primary:
      return {}
    last = int(self.config.get("rounds", 1))
    out = os.path.join(self.workdir, "report.html")
    extra = self._expand(self.config.get("report") or {})
    report.write_report(
        out, config=self.config.to_dict(), title=extra.pop("title", "LiFT run report"),
        scores_before=os.path.join(self._dir("eval_base/score"), "scores.jsonl"),
        scores_after=os.path.join(self._dir("eval_tuned/score"), "scores.jsonl"),
        manifest_before=os.path.join(self._dir("eval_base/generate"), "manifest.jsonl"),
        manifest_after=os.path.join(self._dir("eval_tuned/generate"), "manifest.jsonl"),
        train_history=os.path.join(self._dir(f"round{last}/train"), "train_history.jsonl"),
        extra=extra)
    return {"report": out,
            "mean_reward_base": _mean_reward(os.path.join(self._dir("eval_base/score"),
                                                          "scores.jsonl")),
            "mean_reward_tuned": _mean_reward(os.path.join(self._dir("eval_tuned/score"),
                                                           "scores.jsonl"))}

  # --------------------------------------------------------------------- the plan

  def stages(self) -> list[Stage]:
    c = self.config
    plan: list[Stage] = []
    transformer = self.paths["transformer"]
    seed = int(c.get("seed", 0))
    for r in range(1, int(c.get("rounds", 1)) + 1):
      d = f"round{r}"
      gen, sco, pre, tra = (f"{d}/{s}" for s in ("generate", "score", "prepare", "train"))
      manifest = os.path.join(self._dir(gen), "manifest.jsonl")
      scores = os.path.join(self._dir(sco), "scores.jsonl")
      dataset = os.path.join(self._dir(pre), "dataset")
      plan += [
          Stage(gen, "generate", lambda g=gen, t=transformer, s=seed + 1000 * r:
                self._generate(g, c.prompts, t, s)),
          Stage(sco, "score", lambda s=sco, m=manifest: self._score(s, m), needs=[manifest]),
          Stage(pre, "prepare", lambda p=pre, m=manifest, s=scores: self._prepare(p, m, s),
                needs=[manifest, scores]),
          Stage(tra, "train", lambda t=tra, ds=dataset, tr=transformer: self._train(t, ds, tr),
                needs=[dataset]),
      ]
      transformer = os.path.join(self._dir(tra), "transformer")
    base_manifest = os.path.join(self._dir("eval_base/generate"), "manifest.jsonl")
    tuned_manifest = os.path.join(self._dir("eval_tuned/generate"), "manifest.jsonl")
    plan += [
        Stage("eval_base/generate", "eval_base",
              lambda: self._generate("eval_base/generate", c.eval_prompts,
                                     self.paths["transformer"], seed)),
        Stage("eval_base/score", "eval_base", lambda: self._score("eval_base/score", base_manifest),
              needs=[base_manifest]),
        Stage("eval_tuned/generate", "eval_tuned",
              lambda t=transformer: self._generate("eval_tuned/generate", c.eval_prompts, t, seed),
              needs=[transformer]),
        Stage("eval_tuned/score", "eval_tuned",
              lambda: self._score("eval_tuned/score", tuned_manifest), needs=[tuned_manifest]),
        Stage("report", "report", self._report),
    ]
    for spec in self._extra_specs():
      names = [st.name for st in plan]
      after = spec["after"]
      if after != "start" and after not in names:
        raise ConfigError(f"extra stage {spec['name']}: after={after!r} is not a stage "
                          f"(stages: {', '.join(names)})")
      at = 0 if after == "start" else names.index(after) + 1
      plan.insert(at, Stage(spec["name"], spec["name"], lambda sp=spec: self._extra(sp)))
    return plan

  def run(self, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the (selected) stages in order; returns {stage: summary}."""
    if only:
      known = list(STAGES) + [spec.get("name") for spec in self._extra_specs()]
      unknown = sorted(set(only) - set(known))
      if unknown:
        raise ConfigError(f"unknown stages {unknown}; known: {', '.join(known)}")
    self.validate()
    self.resolve_models(create=False)
    plan = [s for s in self.stages() if not only or s.kind in only]
    selected = {s.name for s in plan}
    # Inputs made by stages that are not selected must already exist: say so now, not later.
    for stage in plan:
      for need in stage.needs:
        producer = next((s for s in self.stages() if need.startswith(self._dir(s.name))), None)
        if producer and producer.name not in selected and not files.exists(need):
          raise ConfigError(f"stage {stage.name} needs {need}, made by stage {producer.name}: "
                            f"run it first (add '{producer.kind}' to --stages)")
    files.makedirs(self.workdir)
    if self.primary:
      files.write_text(os.path.join(self.workdir, "config.json"),
                       json.dumps(self.config.to_dict(), indent=2, default=str))
    self.resolve_models(create=True)
    results = {}
    for stage in plan:
      done = os.path.join(self._dir(stage.name), DONE)
      if files.isfile(done):
        print(f"[lift] {stage.name}: done, skipped", flush=True)
        results[stage.name] = files.read_json(done, "the stage's DONE.json")
        continue
      print(f"[lift] {stage.name} ...", flush=True)
      start = time.perf_counter()
      summary = dict(stage.run() or {}, seconds=round(time.perf_counter() - start, 1))
      files.makedirs(self._dir(stage.name))
      if self.primary:
        files.write_text(done, json.dumps(summary, indent=2, default=str))
      print(f"[lift] {stage.name}: {json.dumps(summary, default=str)}", flush=True)
      results[stage.name] = summary
    return results

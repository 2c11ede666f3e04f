"""The package's structure: no import circle, and dependencies point one way.

Layers -> models -> diffusion -> lift -> stages -> tools: a package imports only from those below
it (see README "Architecture"). Imports are read from the source (module level and inside functions), so
a function-local import cannot hide an edge.
"""

from __future__ import annotations

import ast
import os

import lift_jax

ROOT = os.path.dirname(lift_jax.__file__)
# Top-level part -> the parts it may import from.
BASE = {"files", "runtime", "parallel"}
ALLOWED = {
    "files": set(), "parallel": {"files"},
    "runtime": {"parallel"},  # start-up sets the accelerator flags (parallel.runtime_flags)
    "layers": BASE, "checkpoint": BASE,
    "models": BASE | {"layers", "checkpoint"},
    "data": BASE | {"layers", "checkpoint", "models"},
    "diffusion": BASE | {"layers", "checkpoint", "models"},
    "lift": BASE | {"layers", "checkpoint", "models", "data", "diffusion"},
    "stages": BASE | {"layers", "checkpoint", "models", "data", "diffusion", "lift"},
    # The demo's world is an application on top: it uses the library, nothing imports it.
    "demo": BASE | {"layers", "checkpoint", "models", "data", "diffusion", "lift", "stages"},
}


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, names in os.walk(ROOT):
    for name in names:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3]
        out[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(folder, name)
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The lift_jax modules `path` imports (`from pkg import mod` counts as `pkg.mod`)."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names)
  return {m for m in found if m in modules and m != "lift_jax"}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, modules) for m, p in modules.items()}


def _part(module: str) -> str:
  return (module.split(".") + [""])[1]


def test_dependencies_point_one_way():
  bad = sorted((m, d) for m, deps in _graph().items() if m != "lift_jax" for d in deps
               if _part(d) != _part(m) and _part(d) not in ALLOWED[_part(m)])
  assert not bad, "imports against the layering:\n" + "\n".join(f"{m} -> {d}" for m, d in bad)


def test_no_import_circle():
  graph = _graph()
  # A package's __init__ importing its own modules is not a circle of concepts.
  edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
  state: dict[str, int] = {}
  cycles = []

  def visit(node, stack):
    state[node] = 1
    for dep in sorted(edges.get(node, ())):
      if state.get(dep) == 1:
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[node] = 2

  for module in sorted(edges):
    if module not in state:
      visit(module, [module])
  assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_at_the_top():
  """No function-local import of the package's own modules (they would hide the graph) in the
  lower layers; optional heavy third-party dependencies may still be imported where used."""
  local = []
  for module, path in _modules().items():
    if _part(module) not in ("files", "layers", "checkpoint", "models", "diffusion"):
      continue
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("lift_jax"):
            local.append(f"{module}:{inner.lineno} {inner.module}")
          elif isinstance(inner, ast.Import) and any(a.name.startswith("lift_jax")
                                                     for a in inner.names):
            local.append(f"{module}:{inner.lineno}")
  assert not local, "function-local imports of lift_jax modules:\n" + "\n".join(local)

"""Import a `tools/*.py` script as a module, once per test session.

The tools define absl flags at import time on the global FLAGS; two tools both define `--config`,
so a tool's flags are removed before another tool is imported.
"""

import importlib.util
import os
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LOADED: dict[str, object] = {}
_CURRENT: list[str] = []


def load(name: str):
  """tools/<name>.py as a module (flags of any other tool loaded before are dropped)."""
  if _CURRENT and _CURRENT[0] == name:
    return _LOADED[name]
  for flag_name in list(flags.FLAGS):
    module = flags.FLAGS.find_module_defining_flag(flag_name)
    if module and module.endswith("_tool"):
      delattr(flags.FLAGS, flag_name)
  spec = importlib.util.spec_from_file_location(f"{name}_tool",
                                                os.path.join(ROOT, "tools", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  _LOADED[name] = mod
  _CURRENT[:] = [name]
  return mod

"""The demo loop at test size: configs/demo.py with fewer videos and steps (a config file for
`tools/lift.py --config=tests/tools/demo_quick.py`).

Every stage, its order and its settings are the demo's own; only the counts shrink (2 videos a
prompt instead of 16, 8 train steps of 8 videos with a checkpoint every 4, 2 critic SFT epochs), so
the slow tests that run the whole loop several times (killed and resumed, as 2 processes) stay
within CI's time.
"""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = {"generate": {"num_videos_per_prompt": "2"},
         "train": {"num_steps": "8", "checkpoint_every": "4", "data.batch_size": "8"},
         "critic_sft": {"num_epochs": "2", "data.test_size": "12"}}


def _demo():
  spec = importlib.util.spec_from_file_location("lift_jax_demo_config",
                                                os.path.join(ROOT, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _replace(overrides, values):
  keys = {o.split("=", 1)[0] for o in overrides}
  assert set(values) <= keys, f"the demo config no longer sets {set(values) - keys}"
  return [f"{k}={values[k]}" if k in values else o
          for o in overrides for k in [o.split("=", 1)[0]]]


def get_config():
  demo = _demo()
  c = demo.get_config()
  for block, values in QUICK.items():
    c[block].overrides = _replace(list(c[block].overrides), values)
  c.extra_stages = demo.extra_stages(c)  # the extra stages carry the overrides in their flags
  return c

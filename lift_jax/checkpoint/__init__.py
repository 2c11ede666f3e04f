"""Reading PyTorch checkpoints without PyTorch, parameter tables, and converted checkpoints."""

from lift_jax.checkpoint.safetensors import (CheckpointError, SafetensorsFile, WeightFolder,
                                             write_safetensors)
from lift_jax.checkpoint.spec import ModelSpec, component_folder
from lift_jax.checkpoint.store import (is_converted, read_meta, restore_model, save_model,
                                       save_streaming)
from lift_jax.checkpoint.tables import (Rule, identity, linear, load_from_table,
                                        stream_from_table)

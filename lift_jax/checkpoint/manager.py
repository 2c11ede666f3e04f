"""Train checkpoints: the train state and the data iterator, saved together with orbax.

Saves are asynchronous (training continues while the previous step's arrays are written); a
checkpoint only counts once orbax has committed it, so a kill -9 mid-save leaves the previous one.
Restore places every array straight onto the current mesh's shardings, so a run saved on one
device layout resumes on another.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from lift_jax import files


def _data_args(iterator, restore: bool):
  import grain
  return (grain.checkpoint.CheckpointRestore(iterator) if restore
          else grain.checkpoint.CheckpointSave(iterator))


class TrainCheckpointer:
  """`save(step, state, data_iterator)`, `restore(abstract_state, data_iterator)`, `latest_step`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = files.absolute(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = _data_args(data_iterator, restore=False)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, data_iterator=None, step: int | None = None) -> Any:
    """The state at `step` (default: latest), resharded onto `abstract_state`'s shardings.

    A given `data_iterator` is moved to the saved position in place.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = _data_args(data_iterator, restore=True)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays: a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

"""Orbax checkpoints of the train state together with the data position.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest). The data position travels in the same checkpoint,
so a resumed run reads exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run under `model_dir/checkpoints`."""

  def __init__(self, model_dir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save),
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, items: Mapping[str, Any], data_state: Mapping[str, Any]) -> None:
    """Starts saving the array trees `items` and the JSON `data_state` at `step`.

    Returns before the write ends. Items are saved separately (params apart from
    the optimizer state) so an evaluator restores parameters alone.
    """
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    self._manager.save(step, args=ocp.args.Composite(data=ocp.args.JsonSave(dict(data_state)), **args),
                       force=True)

  def restore(self, step: int, abstract_items: Mapping[str, Any]) -> tuple[dict[str, Any], dict]:
    """Restores the named items of `step` onto their abstract trees (shapes and shardings)."""
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    restored = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore(), **args))
    logging.info("restored checkpoint %s/%d", self.directory, step)
    return {name: restored[name] for name in abstract_items}, dict(restored["data"])

  def restore_data_state(self, step: int) -> dict:
    """The JSON data position saved at `step`, without reading any array."""
    restored = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    return dict(restored["data"])

  def set_aside(self, step: int) -> str:
    """Moves an unreadable checkpoint out of the way (kept, not deleted); returns where it went."""
    target = os.path.join(os.path.dirname(self.directory), "unreadable_checkpoints", str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      target = f"{target}.{len(os.listdir(os.path.dirname(target)))}"
    os.rename(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

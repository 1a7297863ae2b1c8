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
from orbax.checkpoint import checkpoint_managers as preservation


BEST_MODES = ("max", "min")


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run under `model_dir/checkpoints`.

  With `best_metric`, the checkpoint whose saved metrics hold the best value of that name
  (highest for `best_mode="max"`) is kept too, however old: a run evaluated during training
  keeps its best held-out state as well as the latest ones it resumes from.
  """

  def __init__(self, model_dir: str, max_to_keep: int = 3, async_save: bool = True,
               best_metric: str | None = None, best_mode: str = "max"):
    if best_mode not in BEST_MODES:
      raise ValueError(f"best_mode={best_mode!r}; expected one of {BEST_MODES}")
    self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
    self.best_metric, self.best_mode = best_metric, best_mode
    policies = [preservation.LatestN(max_to_keep)]
    if best_metric:
      # BestN keeps the last of the checkpoints sorted ascending by the metric.
      policies.append(preservation.BestN(get_metric_fn=self._metric_value, reverse=best_mode == "min", n=1,
                                         keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=preservation.AnyPreservationPolicy(policies), create=True,
            enable_async_checkpointing=async_save,
            # Orbax writes metrics to disk (where best_step and a resumed run read them) only
            # when it tracks a best checkpoint; the preservation policy above decides deletion.
            best_fn=self._metric_value if best_metric else None,
            best_mode=best_mode),
    )

  def _metric_value(self, metrics: Mapping[str, float]) -> float:
    if self.best_metric not in metrics:
      raise KeyError(f"checkpoint metrics {sorted(metrics)} lack best_metric {self.best_metric!r}")
    return float(metrics[self.best_metric])

  def best_step(self) -> int | None:
    """The step whose saved `best_metric` is best (the later one on a tie), or None if none is saved."""
    if not self.best_metric:
      return None
    step = self._manager.best_step()
    # Orbax falls back to a step without metrics when no checkpoint has any.
    return step if step is not None and self._manager.metrics(step) else None

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, items: Mapping[str, Any], data_state: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts saving the array trees `items` and the JSON `data_state` at `step`.

    Returns before the write ends. Items are saved separately (params apart from
    the optimizer state) so an evaluator restores parameters alone. `metrics` (host
    floats, e.g. held-out scores of this state) rank checkpoints for `best_metric`.
    """
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    self._manager.save(step, args=ocp.args.Composite(data=ocp.args.JsonSave(dict(data_state)), **args),
                       metrics=dict(metrics) if metrics else None, force=True)

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

"""Training metrics: TensorBoard scalars, a JSON-lines copy, and a console progress bar (process 0 only)."""

from __future__ import annotations

import json
import os
from typing import Mapping

METRICS_FILE = "metrics.jsonl"

import tensorboardX
import tqdm


class MetricsWriter:
  """Writes scalars to `model_dir/tb` and `model_dir/metrics.jsonl`, drives a progress bar;
  silent off process 0. A resumed run appends to the same files."""

  def __init__(self, model_dir: str, start_step: int, total_steps: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self._writer = tensorboardX.SummaryWriter(os.path.join(model_dir, "tb"))
    self._jsonl = open(os.path.join(model_dir, METRICS_FILE), "a")
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                          desc="train")

  def advance(self, steps: int = 1) -> None:
    """Moves the progress bar; touches no device array."""
    if self.enabled:
      self._bar.update(steps)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs host scalars at `step` and shows the main ones on the bar."""
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()
    self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self._jsonl.flush()
    shown = {k: scalars[k] for k in ("loss", "tokens_per_second") if k in scalars}
    self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

  def message(self, text: str) -> None:
    """Prints a line without breaking the progress bar."""
    if self.enabled:
      tqdm.tqdm.write(text)

  def close(self) -> None:
    if self.enabled:
      self._bar.close()
      self._writer.close()
      self._jsonl.close()


def read_metrics(model_dir: str) -> dict[str, dict[int, float]]:
  """{scalar name: {step: value}} from a run's metrics.jsonl (a later line for a step wins:
  a run resumed from an earlier checkpoint logs those steps again)."""
  scalars: dict[str, dict[int, float]] = {}
  with open(os.path.join(model_dir, METRICS_FILE)) as f:
    for line in f:
      record = json.loads(line)
      step = record.pop("step")
      for name, value in record.items():
        scalars.setdefault(name, {})[step] = value
  return scalars

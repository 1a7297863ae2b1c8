"""Training metrics: TensorBoard scalars and a console progress bar (process 0 only)."""

from __future__ import annotations

import os
from typing import Mapping

import tensorboardX
import tqdm


class MetricsWriter:
  """Writes scalars to `model_dir/tb` and drives a progress bar; silent off process 0."""

  def __init__(self, model_dir: str, start_step: int, total_steps: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self._writer = tensorboardX.SummaryWriter(os.path.join(model_dir, "tb"))
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

"""Held-out splits declared next to the mixtures they belong to.

A seqio Mixture only knows the tasks it trains on. Instruction-tuning results are
about tasks the model never saw, so every mixture used for a held-out evaluation
declares its evaluation tasks here, each tagged seen or held-out with its cluster,
and the trainer refuses a mixture that contains one of its own held-out tasks.
"""

from __future__ import annotations

import dataclasses
import seqio


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """One evaluation task of a held-out split."""

  task_name: str
  cluster: str
  heldout: bool
  kind: str  # "generation" (decode + metric) or "classification" (rank answer_choices)

  def __post_init__(self):
    if self.kind not in ("generation", "classification"):
      raise ValueError(f"EvalTask {self.task_name}: kind must be generation or classification, got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class HeldoutSplit:
  """The evaluation protocol of a training mixture."""

  mixture_name: str
  eval_tasks: tuple[EvalTask, ...]

  @property
  def heldout_task_names(self) -> frozenset[str]:
    return frozenset(t.task_name for t in self.eval_tasks if t.heldout)


_HELDOUT_SPLITS: dict[str, HeldoutSplit] = {}


def declare_heldout_split(split: HeldoutSplit) -> HeldoutSplit:
  """Registers `split` for its mixture; the mixture must not train on its held-out tasks."""
  _HELDOUT_SPLITS[split.mixture_name] = split
  return split


def get_heldout_split(mixture_name: str) -> HeldoutSplit:
  """Returns the split declared for `mixture_name`."""
  if mixture_name not in _HELDOUT_SPLITS:
    raise ValueError(
        f"no held-out split declared for mixture {mixture_name!r}; declared: {sorted(_HELDOUT_SPLITS)}")
  return _HELDOUT_SPLITS[mixture_name]


def training_task_names(mixture_or_task_name: str) -> list[str]:
  """Names of the leaf tasks a seqio mixture (or a single task) trains on."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    return sorted(t.name for t in provider.tasks)
  return [provider.name]


def check_no_heldout_in_training(mixture_or_task_name: str) -> None:
  """Raises if the mixture trains on a task that any declared split holds out."""
  trained = set(training_task_names(mixture_or_task_name))
  for split in _HELDOUT_SPLITS.values():
    leaked = sorted(trained & split.heldout_task_names)
    if leaked:
      raise ValueError(
          f"mixture {mixture_or_task_name!r} trains on tasks that mixture {split.mixture_name!r} "
          f"declares held out: {leaked}")


def uniform_rates(task_names: list[str]) -> list[tuple[str, float]]:
  """Equal mixing rates, for tasks whose sources are unlimited streams."""
  return [(name, 1.0) for name in task_names]

"""Mixing rates and held-out splits, declared next to the mixtures they belong to.

A seqio Mixture only knows the tasks it trains on. Instruction-tuning results are
about tasks the model never saw, so every mixture used for a held-out evaluation
declares its evaluation tasks here, each tagged seen or held-out with its cluster,
and the trainer refuses a mixture that contains one of its held-out tasks.

`register_mixture` does both at once:

  mixtures.register_mixture(
      "flan_no_nli", train_tasks, num_examples=sizes, cap=30_000,
      eval_tasks=[mixtures.EvalTask("flan.rte", "nli", False, "classification"), ...],
      heldout_clusters=["nli"])

Rates are examples-proportional as in T5 and FLAN: task i gets a share proportional
to (min(n_i, cap) * w_i) ** (1 / temperature), where n_i is its number of training
examples and w_i an optional (Flan-2022-style collection) weight.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Sequence

import seqio


class _DropUncachedRateWarning(logging.Filter):
  """seqio warns once per task and per call that an uncached task's rate counts input
  examples; `rate_fn` documents that it does, and a large mixture would print hundreds."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "not cached so using number of input examples" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedRateWarning())


# ----- Held-out splits -----


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
  """The evaluation protocol of a training mixture.

  `heldout_tasks` names tasks held out beyond the evaluation tasks flagged held out (e.g. a
  dataset's other prompt variants that are not evaluated); `heldout_clusters` records the
  clusters whose every evaluation task is held out (those tasks carry `heldout=True`).
  """

  mixture_name: str
  eval_tasks: tuple[EvalTask, ...]
  heldout_tasks: tuple[str, ...] = ()
  heldout_clusters: tuple[str, ...] = ()

  @property
  def heldout_task_names(self) -> frozenset[str]:
    return frozenset(t.task_name for t in self.eval_tasks if t.heldout) | frozenset(self.heldout_tasks)

  def describe(self, task_name: str) -> str:
    """`task_name` with its cluster, when the split evaluates it."""
    clusters = [t.cluster for t in self.eval_tasks if t.task_name == task_name]
    return f"{task_name!r} (cluster {clusters[0]!r})" if clusters else repr(task_name)


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


def _mixture_names_within(name: str) -> list[str]:
  """`name` and, for a mixture, every mixture nested in it (depth first)."""
  provider = seqio.get_mixture_or_task(name)
  if not isinstance(provider, seqio.Mixture):
    return [name]
  names = [name]
  for child in provider.rate_per_task_name:
    if child in seqio.MixtureRegistry.names():
      names += _mixture_names_within(child)
  return names


def check_no_heldout_in_training(mixture_or_task_name: str, eval_mixtures: Sequence[str] = ()) -> None:
  """Raises if the mixture trains on a task held out by a split that applies to it.

  The splits that apply are those of the trained mixture and of the mixtures nested in it,
  plus those of `eval_mixtures` (the suites this run is evaluated on). When none of these
  declares a split, every declared split applies. The trained mixture's own split is the
  protocol it was built for: a leave-one-cluster-out mixture is not checked against its
  siblings, which hold out the clusters it trains on.
  """
  trained = set(training_task_names(mixture_or_task_name))
  names = [n for n in _mixture_names_within(mixture_or_task_name) + list(eval_mixtures) if n in _HELDOUT_SPLITS]
  missing = [n for n in eval_mixtures if n not in _HELDOUT_SPLITS]
  if missing:
    raise ValueError(f"no held-out split declared for evaluation mixture(s) {missing}; "
                     f"declared: {sorted(_HELDOUT_SPLITS)}")
  splits = [_HELDOUT_SPLITS[n] for n in dict.fromkeys(names)] or list(_HELDOUT_SPLITS.values())
  for split in splits:
    leaked = sorted(trained & split.heldout_task_names)
    if leaked:
      raise ValueError(
          f"mixture {mixture_or_task_name!r} trains on tasks that the held-out split of mixture "
          f"{split.mixture_name!r} holds out: {', '.join(split.describe(t) for t in leaked)}")


# ----- Mixing rates -----


def uniform_rates(task_names: list[str]) -> list[tuple[str, float]]:
  """Equal mixing rates, for tasks whose sources are unlimited streams."""
  return [(name, 1.0) for name in task_names]


def _check_rate_args(cap: int | None, temperature: float) -> None:
  if cap is not None and cap <= 0:
    raise ValueError(f"mixing rate cap must be a positive number of examples or None, got {cap}")
  if not temperature > 0:
    raise ValueError(f"mixing rate temperature must be > 0, got {temperature}")


def mixing_rates(num_examples: Mapping[str, int], *, cap: int | None = None, temperature: float = 1.0,
                 weights: Mapping[str, float] | None = None) -> dict[str, float]:
  """Examples-proportional rates, normalized to sum to 1: rate_i ∝ (min(n_i, cap) * w_i) ** (1/T).

  The cap and temperature act as in seqio's `mixing_rate_num_examples`. `weights` (default
  1 per task) multiply a task's capped count, so a weight still counts for a capped task
  (seqio's `scale` acts before the cap, where a capped task would absorb it).
  """
  _check_rate_args(cap, temperature)
  weights = dict(weights or {})
  unknown = sorted(set(weights) - set(num_examples))
  if unknown:
    raise ValueError(f"mixing weights name tasks with no example count: {unknown}")
  raw = {}
  for name, count in num_examples.items():
    weight = float(weights.get(name, 1.0))
    if count < 0 or weight < 0:
      raise ValueError(f"task {name!r}: example count and weight must be >= 0, got {count} and {weight}")
    capped = min(count, cap) if cap is not None else count
    raw[name] = (capped * weight) ** (1.0 / temperature)
  total = sum(raw.values())
  if not total > 0:
    raise ValueError(f"mixing rates sum to zero: every task has no examples or weight 0 ({dict(num_examples)})")
  return {name: rate / total for name, rate in raw.items()}


@dataclasses.dataclass(frozen=True)
class NumExamplesRate:
  """A seqio rate callable: `mixing_rates`' unnormalized rate from the task's own size.

  The size is what `seqio.mixing_rate_num_examples` reads: the cached stats of a cached
  task, else the source's number of input examples. A frozen dataclass rather than a
  closure, so two mixtures defined alike compare equal.
  """

  cap: int | None = None
  temperature: float = 1.0
  weight: float = 1.0

  def __call__(self, task: seqio.Task) -> float:
    # (min(n, cap) * w) ** (1/T) == min(n, cap) ** (1/T) * w ** (1/T); seqio computes the first factor.
    rate = seqio.mixing_rate_num_examples(task, maximum=self.cap, temperature=self.temperature)
    return rate * self.weight ** (1.0 / self.temperature)


def rate_fn(cap: int | None = None, temperature: float = 1.0, weight: float = 1.0) -> NumExamplesRate:
  """The seqio rate callable `(task) -> float` matching `mixing_rates` for tasks whose sizes seqio knows."""
  _check_rate_args(cap, temperature)
  if weight < 0:
    raise ValueError(f"mixing weight must be >= 0, got {weight}")
  return NumExamplesRate(cap, temperature, float(weight))


# ----- Registration -----

Rate = float | Callable[[seqio.Task], float]


@dataclasses.dataclass(frozen=True)
class _MixtureDefinition:
  rates: tuple[tuple[str, Rate], ...]
  split: HeldoutSplit | None


_DEFINITIONS: dict[str, _MixtureDefinition] = {}


def _heldout_split(name: str, eval_tasks: Sequence[EvalTask], heldout_clusters: Sequence[str],
                   heldout_tasks: Sequence[str]) -> HeldoutSplit:
  """The split with every evaluation task of a held-out cluster (or named held out) flagged held out."""
  names = [t.task_name for t in eval_tasks]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"mixture {name!r}: evaluation tasks listed twice: {repeated}")
  clusters = {t.cluster for t in eval_tasks}
  unknown = sorted(set(heldout_clusters) - clusters)
  if unknown:
    raise ValueError(f"mixture {name!r}: held-out clusters {unknown} contain no evaluation task; "
                     f"clusters: {sorted(clusters)}")
  heldout = set(heldout_tasks)
  flagged = tuple(dataclasses.replace(t, heldout=True)
                  if t.cluster in heldout_clusters or t.task_name in heldout else t for t in eval_tasks)
  extra = tuple(sorted(heldout - set(names)))
  return HeldoutSplit(name, flagged, heldout_tasks=extra, heldout_clusters=tuple(sorted(set(heldout_clusters))))


def register_mixture(name: str, task_names: Sequence[str], *, num_examples: Mapping[str, int] | None = None,
                     cap: int | None = None, temperature: float = 1.0, weights: Mapping[str, float] | None = None,
                     rate: Rate | None = None, eval_tasks: Sequence[EvalTask] = (),
                     heldout_clusters: Sequence[str] = (), heldout_tasks: Sequence[str] = ()) -> seqio.Mixture:
  """Registers the seqio Mixture `name` over `task_names` and, with `eval_tasks`, its held-out split.

  Rates come from `mixing_rates(num_examples, cap=, temperature=, weights=)` when
  `num_examples` is given, else every task gets `rate` (a number, or a seqio rate callable
  such as `rate_fn(cap=...)` that reads each task's size when the mixture is read; 1.0 by
  default). Every evaluation task in `heldout_clusters`, and every task in `heldout_tasks`,
  is held out; a mixture that trains on one of its held-out tasks is refused. Registering
  the same definition again (a module imported twice) returns the registered mixture.
  """
  task_names = list(task_names)
  if not task_names:
    raise ValueError(f"mixture {name!r}: no tasks")
  repeated = sorted({n for n in task_names if task_names.count(n) > 1})
  if repeated:
    raise ValueError(f"mixture {name!r}: tasks listed twice: {repeated}")
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  unregistered = [n for n in task_names if n not in known]
  if unregistered:
    raise ValueError(f"mixture {name!r}: no task or mixture registered as {unregistered}")
  if num_examples is not None:
    if rate is not None:
      raise ValueError(f"mixture {name!r}: pass num_examples or rate, not both")
    missing = [n for n in task_names if n not in num_examples]
    extra = sorted(set(num_examples) - set(task_names))
    if missing or extra:
      raise ValueError(f"mixture {name!r}: num_examples must give exactly the mixture's tasks; "
                       f"missing {missing}, not in the mixture {extra}")
    normalized = mixing_rates({n: num_examples[n] for n in task_names}, cap=cap, temperature=temperature,
                              weights=weights)
    rates: tuple[tuple[str, Rate], ...] = tuple(normalized.items())
  else:
    if cap is not None or temperature != 1.0 or weights:
      raise ValueError(f"mixture {name!r}: cap, temperature and weights need num_examples "
                       "(or pass rate=mixtures.rate_fn(cap, temperature, weight))")
    rates = tuple((n, 1.0 if rate is None else rate) for n in task_names)
  split = None
  if eval_tasks or heldout_clusters or heldout_tasks:
    split = _heldout_split(name, eval_tasks, heldout_clusters, heldout_tasks)
  definition = _MixtureDefinition(rates, split)

  if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
    if _DEFINITIONS.get(name) == definition and name in seqio.MixtureRegistry.names():
      return seqio.get_mixture_or_task(name)
    raise ValueError(f"mixture {name!r} is already registered with a different definition (tasks, rates "
                     "or held-out split); give the new mixture another name")
  mixture = seqio.Mixture(name, list(rates))
  if split is not None:
    leaked = sorted(set(t.name for t in mixture.tasks) & split.heldout_task_names)
    if leaked:
      raise ValueError(f"mixture {name!r} trains on tasks its own held-out split holds out: "
                       f"{', '.join(split.describe(t) for t in leaked)}")
  seqio.MixtureRegistry.add_provider(name, mixture)
  _DEFINITIONS[name] = definition
  if split is not None:
    declare_heldout_split(split)
  return mixture

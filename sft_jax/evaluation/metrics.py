"""Metric functions in the seqio convention: `fn(targets, predictions) -> {name: value}`.

This module is pure Python on purpose: task registrations in `sft_jax.data.collections`
import it, so it must not pull in JAX, TensorFlow or any other part of sft_jax.
All scores are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Mapping, Sequence

# The metric a task is ranked by, in order of preference: generation tasks report
# exact match, rank-classification tasks report accuracy.
PRIMARY_METRICS = ("exact_match", "accuracy")


def _check_pairs(targets: Sequence[str], predictions: Sequence[str]) -> None:
  # A silent zip would score a truncated prediction list as if it were complete.
  if len(targets) != len(predictions):
    raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    raise ValueError("cannot score an empty list of targets")


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Fraction of predictions equal to their target after stripping surrounding whitespace.

  Comparison is otherwise exact (case-sensitive): decoders often emit a trailing newline
  or leading space that is not a content error, but casing is.
  """
  _check_pairs(targets, predictions)
  hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
  return {"exact_match": hits / len(targets)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Fraction of predictions exactly equal to their target (e.g. the argmax answer choice)."""
  _check_pairs(targets, predictions)
  # Rank classification predicts one of the answer choices verbatim, so no normalization.
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": hits / len(targets)}


def primary_metric(scores: Mapping[str, float]) -> float:
  """Returns the first metric of `PRIMARY_METRICS` present in `scores`."""
  for name in PRIMARY_METRICS:
    if name in scores:
      return float(scores[name])
  raise ValueError(
      f"no primary metric in scores {sorted(scores)}; expected one of {list(PRIMARY_METRICS)}")

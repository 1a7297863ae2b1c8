"""Metric functions in the seqio convention: `fn(targets, predictions) -> {name: value}`.

This module is pure Python on purpose: task registrations in `sft_jax.data.collections`
import it, so it must not pull in JAX, TensorFlow or any other part of sft_jax.
All scores are fractions in [0, 1], with one exception: `superni_metrics` reports
percentages in [0, 100], the scale of the official Super-NaturalInstructions script, so
its numbers compare directly with published Super-NI results. Do not average them with
fraction-scale scores: `primary_metric` brings a task's ranking metric to [0, 1].
"""

from __future__ import annotations

import functools
import string
from typing import Any, Mapping, Sequence

# The metric a task is ranked by, in order of preference: Super-NI tasks report ROUGE-L (the
# paper's headline metric), other generation tasks exact match, rank-classification tasks
# accuracy.
PRIMARY_METRICS = ("rougeL", "exact_match", "accuracy")
# Metrics reported in percent; `primary_metric` divides them by 100 so means mix scales safely.
PERCENT_METRICS = frozenset({"rougeL"})


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


# Official Super-NI normalization strips `string.punctuation` (ASCII only), nothing else.
_SUPERNI_PUNCTUATION = frozenset(string.punctuation)


def normalize_superni_answer(text: str) -> str:
  """Super-NI answer normalization: lowercase, drop ASCII punctuation, collapse whitespace.

  Unlike SQuAD's normalization, articles (a, an, the) are kept.
  """
  text = "".join(ch for ch in text.lower() if ch not in _SUPERNI_PUNCTUATION)
  return " ".join(text.split())


@functools.lru_cache(maxsize=1)
def _superni_rouge_scorer() -> Any:
  # Imported here: rouge_score pulls in nltk and numpy (seconds), which a task
  # registration importing this module should not pay for.
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  # The official script's English-track scorer: rouge-score's default tokenizer
  # (lowercase, split on non-alphanumerics) with the Porter stemmer on tokens over 3 chars.
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _as_references(target: str | Sequence[str], index: int) -> list[str]:
  # A bare string is one reference; iterating it would score each character as a reference.
  refs = [target] if isinstance(target, str) else list(target)
  if not refs:
    raise ValueError(f"instance {index}: no reference outputs")
  for ref in refs:
    if not isinstance(ref, str):
      raise ValueError(f"instance {index}: reference must be a string, got {type(ref).__name__}")
  return refs


def superni_metrics(targets: Sequence[Sequence[str] | str],
                    predictions: Sequence[str]) -> dict[str, float]:
  """Super-NI exact match and ROUGE-L as the official `eval/automatic/evaluation.py` computes them.

  `targets[i]` holds all reference outputs of instance i (a plain string counts as the only
  one). Exact match compares `normalize_superni_answer` forms; ROUGE-L is the f-measure of
  rouge-score with stemming on the raw strings. Each takes the max over references, then the
  mean over instances, x100 and rounded to 4 decimals as the official script prints them.
  """
  _check_pairs(targets, predictions)
  scorer = _superni_rouge_scorer()
  em_total, rouge_total = 0.0, 0.0
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    refs = _as_references(target, i)
    norm_prediction = normalize_superni_answer(prediction)
    em_total += max(float(normalize_superni_answer(r) == norm_prediction) for r in refs)
    rouge_total += max(scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure for r in refs)
  n = len(targets)
  return {"exact_match": round(100.0 * em_total / n, 4), "rougeL": round(100.0 * rouge_total / n, 4)}


def primary_metric_name(scores: Mapping[str, float]) -> str:
  """Returns the first metric of `PRIMARY_METRICS` present in `scores`."""
  for name in PRIMARY_METRICS:
    if name in scores:
      return name
  raise ValueError(
      f"no primary metric in scores {sorted(scores)}; expected one of {list(PRIMARY_METRICS)}")


def primary_metric(scores: Mapping[str, float]) -> float:
  """Returns a task's ranking metric on the [0, 1] scale (percent metrics divided by 100).

  Reports average this value over tasks, so a Super-NI task (ROUGE-L in percent) and a
  synthetic task (exact match as a fraction) enter a mean on the same footing.
  """
  name = primary_metric_name(scores)
  return float(scores[name]) / (100.0 if name in PERCENT_METRICS else 1.0)

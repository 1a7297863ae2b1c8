"""Tests for sft_jax.evaluation.metrics against hand-computed values."""

import subprocess
import sys

import pytest

from sft_jax.evaluation import metrics


def test_exact_match_hand_computed():
  targets = ["Paris", "4", "yes", "blue"]
  predictions = ["Paris", "5", "yes", "red"]
  assert metrics.exact_match(targets, predictions) == {"exact_match": 0.5}


def test_exact_match_strips_surrounding_whitespace_only():
  targets = ["Paris", " four", "a b"]
  predictions = ["  Paris\n", "four\t", "a  b"]  # inner whitespace still counts
  assert metrics.exact_match(targets, predictions) == {"exact_match": pytest.approx(2 / 3)}


def test_exact_match_is_case_sensitive():
  assert metrics.exact_match(["Paris", "yes"], ["paris", "yes"]) == {"exact_match": 0.5}


def test_accuracy_hand_computed():
  targets = ["entailment", "neutral", "contradiction", "neutral", "entailment"]
  predictions = ["entailment", "entailment", "contradiction", "neutral", "neutral"]
  assert metrics.accuracy(targets, predictions) == {"accuracy": 0.6}


def test_accuracy_compares_exactly():
  # Rank classification returns the choice verbatim: no stripping, no case folding.
  assert metrics.accuracy(["yes", "no", "no"], ["yes ", "No", "no"]) == {
      "accuracy": pytest.approx(1 / 3)}


@pytest.mark.parametrize("fn", [metrics.exact_match, metrics.accuracy])
def test_empty_input_raises(fn):
  with pytest.raises(ValueError, match="empty"):
    fn([], [])


@pytest.mark.parametrize("fn", [metrics.exact_match, metrics.accuracy])
def test_length_mismatch_raises(fn):
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    fn(["a", "b"], ["a"])


def test_primary_metric_prefers_exact_match():
  assert metrics.PRIMARY_METRICS == ("exact_match", "accuracy")
  assert metrics.primary_metric({"rougeL": 0.9, "exact_match": 0.25, "accuracy": 0.75}) == 0.25
  assert metrics.primary_metric({"accuracy": 0.75}) == 0.75


def test_primary_metric_missing_raises_with_names():
  with pytest.raises(ValueError, match="rougeL.*exact_match"):
    metrics.primary_metric({"rougeL": 0.9})


def test_module_imports_no_jax_tf_or_sft_jax():
  code = ("import sys; import sft_jax.evaluation.metrics; "
          "bad = [m for m in ('jax', 'tensorflow', 'sft_jax.data', 'sft_jax.models') "
          "if m in sys.modules]; print(bad); assert not bad")
  subprocess.run([sys.executable, "-c", code], check=True)

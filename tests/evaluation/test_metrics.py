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


def test_primary_metric_order_and_scale():
  assert metrics.PRIMARY_METRICS == ("rougeL", "exact_match", "accuracy")
  assert metrics.primary_metric({"exact_match": 0.25, "accuracy": 0.75}) == 0.25
  assert metrics.primary_metric({"accuracy": 0.75}) == 0.75
  # ROUGE-L is reported in percent and ranks first; means take it on the [0, 1] scale.
  assert metrics.primary_metric_name({"rougeL": 45.0, "exact_match": 50.0}) == "rougeL"
  assert metrics.primary_metric({"rougeL": 45.0, "exact_match": 50.0}) == 0.45


def test_primary_metric_missing_raises_with_names():
  with pytest.raises(ValueError, match="rougeL.*exact_match"):
    metrics.primary_metric({"bleu": 0.9})


def test_module_imports_no_jax_tf_or_sft_jax():
  code = ("import sys; import sft_jax.evaluation.metrics; "
          "bad = [m for m in ('jax', 'tensorflow', 'sft_jax.data', 'sft_jax.models', "
          "'rouge_score', 'nltk') "
          "if m in sys.modules]; print(bad); assert not bad")
  subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# Super-NaturalInstructions (official eval/automatic/evaluation.py semantics)
# ---------------------------------------------------------------------------


def test_superni_normalization_keeps_articles():
  assert metrics.normalize_superni_answer("  The Cat, sat!\n on  THE mat.  ") == "the cat sat on the mat"
  assert metrics.normalize_superni_answer("An apple a day") == "an apple a day"


def test_superni_normalization_drops_ascii_punctuation_only():
  # Punctuation inside words is removed, not replaced by a space.
  assert metrics.normalize_superni_answer("Don't stop: U.S.A.") == "dont stop usa"
  # string.punctuation is ASCII: the inverted question mark and accents survive.
  assert metrics.normalize_superni_answer("¿Qué?") == "¿qué"


def test_superni_case_punctuation_whitespace():
  targets = [["Paris"], ["The answer is 4."], ["yes"]]
  predictions = ["paris!", "the  answer is\t4", "Yes, yes"]
  # EM hits: 1, 1, 0 -> 2/3. ROUGE-L: 1, 1, and for [yes] vs [yes, yes]: LCS 1,
  # P = 1/2, R = 1/1, F = 2/3; mean (1 + 1 + 2/3) / 3 = 8/9.
  assert metrics.superni_metrics(targets, predictions) == {"exact_match": 66.6667, "rougeL": 88.8889}


def test_superni_articles_are_not_removed():
  # SQuAD normalization would make these equal; Super-NI's does not.
  # ROUGE-L: [the, cat] vs [cat]: LCS 1, P = 1, R = 1/2, F = 2/3.
  assert metrics.superni_metrics([["the cat"]], ["cat"]) == {"exact_match": 0.0, "rougeL": 66.6667}


def test_superni_max_over_references():
  targets = [["a red car", "crimson"], ["nope", "Yes"]]
  predictions = ["red car", "yes"]
  # Instance 0: no exact match ("a" is kept); ROUGE-L against "a red car": LCS 2, P = 2/2,
  # R = 2/3, F = 0.8; against "crimson": 0 -> max 0.8. Instance 1: the second reference
  # matches exactly, F = 1. Means: EM 1/2, ROUGE-L (0.8 + 1) / 2 = 0.9.
  assert metrics.superni_metrics(targets, predictions) == {"exact_match": 50.0, "rougeL": 90.0}


def test_superni_plain_string_target_is_one_reference():
  # The evaluator passes one target string per example; it must not be split into characters.
  assert metrics.superni_metrics(["Paris"], ["paris"]) == {"exact_match": 100.0, "rougeL": 100.0}
  assert metrics.superni_metrics(["ab"], ["a"]) == {"exact_match": 0.0, "rougeL": 0.0}


def test_superni_empty_prediction():
  assert metrics.superni_metrics([["something"]], [""]) == {"exact_match": 0.0, "rougeL": 0.0}
  # A reference that is all punctuation normalizes to "" and matches exactly, but has no
  # ROUGE tokens, and rouge-score scores an empty side as 0.
  assert metrics.superni_metrics([["..."]], [""]) == {"exact_match": 100.0, "rougeL": 0.0}


def test_superni_rouge_uses_porter_stemming():
  # "running" and "runs" both stem to "run": ROUGE-L 1 while exact match fails.
  assert metrics.superni_metrics([["running"]], ["runs"]) == {"exact_match": 0.0, "rougeL": 100.0}
  # Without a shared stem nothing matches.
  assert metrics.superni_metrics([["running"]], ["ran"]) == {"exact_match": 0.0, "rougeL": 0.0}


def test_superni_rouge_l_worked_example():
  # Target [the, cat, sat, on, the, mat] (6 tokens), prediction [a, cat, sat, on, the, red, mat]
  # (7): the longest common subsequence is "cat sat on the mat", 5 tokens.
  precision, recall = 5 / 7, 5 / 6
  f = 2 * precision * recall / (precision + recall)  # = 10 / 13
  scores = metrics.superni_metrics([["The cat sat on the mat."]], ["a cat sat on the red mat"])
  assert scores == {"exact_match": 0.0, "rougeL": round(100 * f, 4)}
  assert scores["rougeL"] == 76.9231


def test_superni_rouge_l_counts_order_not_bag_of_words():
  # Prediction [mat, on, sat, cat, the] shares 5 unigrams with the target but its LCS with
  # [the, cat, sat, on, the, mat] is only 2 (e.g. "sat the"): P = 2/5, R = 2/6, F = 4/11.
  scores = metrics.superni_metrics([["the cat sat on the mat"]], ["mat on sat cat the"])
  assert scores == {"exact_match": 0.0, "rougeL": 36.3636}


def test_superni_averages_over_instances():
  targets = [["yes"], ["no"], ["maybe"], ["yes"]]
  predictions = ["yes", "no", "no", "no"]
  assert metrics.superni_metrics(targets, predictions) == {"exact_match": 50.0, "rougeL": 50.0}


def test_superni_bad_references_raise():
  with pytest.raises(ValueError, match="instance 1: no reference outputs"):
    metrics.superni_metrics([["a"], []], ["a", "b"])
  with pytest.raises(ValueError, match="instance 0: reference must be a string, got int"):
    metrics.superni_metrics([[3]], ["3"])
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.superni_metrics([["a"], ["b"]], ["a"])
  with pytest.raises(ValueError, match="empty"):
    metrics.superni_metrics([], [])


def test_primary_metric_of_superni_scores_is_rouge_l_fraction():
  scores = metrics.superni_metrics([["a red car", "crimson"], ["nope", "Yes"]], ["red car", "yes"])
  # "red car" vs "a red car": LCS 2, precision 1, recall 2/3, F 0.8; "yes" vs "Yes": F 1.
  assert scores == {"exact_match": 50.0, "rougeL": 90.0}
  assert metrics.primary_metric(scores) == pytest.approx(0.9)


def test_superni_rouge_l_scores_the_raw_strings_not_the_normalized_ones():
  # ROUGE's tokenizer splits "Don't" at the apostrophe: [don, t, stop] against [dont, stop] share
  # only "stop": P = 1/3, R = 1/2, F = 0.4. Normalized first, both would read "dont stop" (F = 1),
  # and exact match, which does normalize, is a hit.
  assert metrics.superni_metrics([["dont stop"]], ["Don't stop"]) == {"exact_match": 100.0, "rougeL": 40.0}

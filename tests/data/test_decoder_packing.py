"""Decoder-only rows by hand: packing, truncation, evaluation rows, and the trainer's input."""

import numpy as np
import pytest

from sft_jax.data import packing, pipeline
from sft_jax.data.collections import synthetic
from sft_jax.data.vocabularies import EOS_ID

A = {"inputs": np.array([5, 6, EOS_ID]), "targets": np.array([7, EOS_ID])}
B = {"inputs": np.array([8, EOS_ID]), "targets": np.array([9, 4, EOS_ID])}


def test_two_prompted_examples_in_one_row_by_hand():
  batch = next(packing.BestFitPacker(iter([A, B]), 1, None, 12))
  assert set(batch) == set(packing.DECODER_FEATURES)
  row = {k: v[0] for k, v in batch.items()}
  # Prompt then targets, per example; equal sizes keep stream order.
  np.testing.assert_array_equal(row["decoder_target_tokens"], [5, 6, 1, 7, 1, 8, 1, 9, 4, 1, 0, 0])
  # Shifted right within each segment: 0 starts every example, nothing crosses the boundary.
  np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 5, 6, 1, 7, 0, 8, 1, 9, 4, 0, 0])
  # Loss on target tokens only, EOS included; none on the prompt (its EOS too) or padding.
  np.testing.assert_array_equal(row["decoder_loss_weights"], [0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0])
  assert packing.batch_counts(batch) == {"tokens": 10, "slots": 12, "examples": 2}


@pytest.mark.parametrize("inputs, targets, row_targets, weights, cut", [
    # A long prompt gives up its start; the targets stay whole.
    ([10, 11, 12, 13, 14, 15, 1], [7, 1], [11, 12, 13, 14, 15, 1, 7, 1], [0] * 6 + [1] * 2, (1, 0)),
    # Both long: the prompt keeps prompt_length (3) tokens, the targets the rest, EOS last.
    ([10, 11, 12, 13, 1], [20, 21, 22, 23, 24, 25, 26, 1], [12, 13, 1, 20, 21, 22, 23, 1], [0] * 3 + [1] * 5,
     (1, 1)),
    # A short prompt stays whole; the targets are cut.
    ([10, 1], [20, 21, 22, 23, 24, 25, 26, 27, 28, 1], [10, 1, 20, 21, 22, 23, 24, 1], [0] * 2 + [1] * 6, (0, 1)),
])
def test_overlong_prompted_example_by_hand(inputs, targets, row_targets, weights, cut):
  packer = packing.BestFitRowPacker(iter([{"inputs": np.array(inputs), "targets": np.array(targets)}]), None, 8,
                                    prompt_length=3)
  (row,) = list(packer)
  np.testing.assert_array_equal(row["decoder_target_tokens"], row_targets)
  np.testing.assert_array_equal(row["decoder_input_tokens"], [0] + row_targets[:-1])
  np.testing.assert_array_equal(row["decoder_loss_weights"], weights)
  np.testing.assert_array_equal(row["decoder_positions"], np.arange(8))
  counts = packer.counts
  assert (counts.truncated, counts.truncated_inputs, counts.truncated_targets, counts.dropped) == (1, *cut, 0)


def test_overlong_prompted_example_is_dropped_and_counted():
  long = {"inputs": np.arange(10, 20), "targets": np.array([7, 1])}
  packer = packing.BestFitRowPacker(iter([long, A]), None, 8, overlong="drop")
  assert len(list(packer)) == 1
  assert (packer.counts.examples, packer.counts.dropped, packer.counts.truncated) == (2, 1, 0)
  with pytest.raises(ValueError, match="prompt_length"):
    packing.BestFitRowPacker(iter([]), None, 8, prompt_length=8)


def test_evaluation_rows_by_hand():
  ex = {"inputs": np.array([5, 6, 7, 1]), "targets": np.array([9, 1])}
  # The start token takes a prompt slot: the prompt keeps its last 3 tokens.
  full = packing.pad_unpacked_decoder([ex], 4, 3)
  np.testing.assert_array_equal(full["decoder_target_tokens"], [[6, 7, 1, 9, 1, 0, 0]])
  np.testing.assert_array_equal(full["decoder_input_tokens"], [[0, 6, 7, 1, 9, 0, 0]])
  np.testing.assert_array_equal(full["decoder_loss_weights"], [[0, 0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(full["decoder_segment_ids"], [[1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(full["decoder_positions"], [[0, 1, 2, 3, 4, 0, 0]])
  # For decoding, the row stops after the prompt: its last slot predicts the first target.
  prompt = packing.pad_unpacked_decoder([ex], 4, 3, prompt_only=True)
  np.testing.assert_array_equal(prompt["decoder_input_tokens"], [[0, 6, 7, 1]])
  np.testing.assert_array_equal(prompt["decoder_target_tokens"], [[6, 7, 1, 9]])
  np.testing.assert_array_equal(prompt["decoder_segment_ids"], [[1, 1, 1, 1]])


def test_evaluation_rows_equal_the_training_rows():
  """An example that fits is laid out for scoring exactly as the trainer packs it."""
  for ex in (A, B):
    trained = next(packing.BestFitRowPacker(iter([ex]), None, 16))
    scored = packing.pad_unpacked_decoder([ex], 8, 8)
    for name in packing.DECODER_FEATURES:
      np.testing.assert_array_equal(scored[name][0], trained[name], err_msg=name)


def test_train_input_builds_decoder_rows_of_both_lengths():
  config = pipeline.InputConfig(synthetic.MIXTURE_NAME, batch_size=4, input_length=48, target_length=16,
                                autotune=False, feature_layout="decoder_only")
  train_input = pipeline.TrainInput(config)
  batch = next(train_input)
  assert set(batch) == set(packing.DECODER_FEATURES)
  assert all(v.shape == (4, 64) for v in batch.values())
  weights, seg = batch["decoder_loss_weights"], batch["decoder_segment_ids"]
  assert weights.sum() > 0 and np.all(weights[seg == 0] == 0)
  # Every example's weighted tokens come last in its segment, ending in EOS.
  for r in range(4):
    for s in range(1, seg[r].max() + 1):
      where = np.flatnonzero(seg[r] == s)
      w = weights[r, where]
      assert w[-1] == 1 and np.all(np.diff(w) >= 0)
      assert batch["decoder_target_tokens"][r, where[-1]] == EOS_ID
  train_input.close()
  with pytest.raises(ValueError, match="feature_layout"):
    pipeline.InputConfig(synthetic.MIXTURE_NAME, 4, 48, 16, feature_layout="prefix_lm")


def test_start_token_of_the_model_by_hand():
  # DecoderOnlyModel.bos_id -> the packer's: 0 keeps seqio's shift-right, None is no start token.
  assert [packing.packer_bos_id(b) for b in (0, None, 128000)] == [None, packing.NO_BOS, 128000]
  for bos_id, inputs, targets, weights in (
      # Each example's own BOS first; it predicts the prompt's first token.
      (50, [50, 5, 6, 1, 7, 50, 8, 1, 9, 4], [5, 6, 1, 7, 1, 8, 1, 9, 4, 1], [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]),
      # No start token: the prompt's first token starts each example and is never predicted.
      (packing.NO_BOS, [5, 6, 1, 7, 8, 1, 9, 4], [6, 1, 7, 1, 1, 9, 4, 1], [0, 0, 1, 1, 0, 1, 1, 1])):
    row = {k: v[0] for k, v in next(packing.BestFitPacker(iter([A, B]), 1, None, 12, bos_id=bos_id)).items()}
    n = len(targets)
    np.testing.assert_array_equal(row["decoder_input_tokens"][:n], inputs)
    np.testing.assert_array_equal(row["decoder_target_tokens"][:n], targets)
    np.testing.assert_array_equal(row["decoder_loss_weights"][:n], weights)
  # Evaluation rows: without a start token a prompt-only row is just the prompt.
  rows = packing.pad_unpacked_decoder([A], 4, 4, prompt_only=True, bos_id=packing.NO_BOS)
  np.testing.assert_array_equal(rows["decoder_input_tokens"][0], [5, 6, 1, 0])
  np.testing.assert_array_equal(rows["decoder_target_tokens"][0], [6, 1, 7, 0])
  with pytest.raises(ValueError, match="bos_id"):
    pipeline.InputConfig("t", 1, 4, 4, bos_id=5)

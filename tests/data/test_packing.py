"""Best-fit packing: layout, segment isolation features, truncation and efficiency."""

import numpy as np
import pytest

from sft_jax.data import packing
from sft_jax.data.vocabularies import EOS_ID


def _example(n_in, n_tg, start=10):
  inputs = np.arange(start, start + n_in, dtype=np.int32)
  inputs[-1] = EOS_ID
  targets = np.arange(start + 100, start + 100 + n_tg, dtype=np.int32)
  targets[-1] = EOS_ID
  return {"inputs": inputs, "targets": targets}


def test_assemble_row_matches_hand_layout():
  row = packing.assemble_row([(np.array([5, 6, 1]), np.array([7, 1])), (np.array([8, 1]), np.array([9, 4, 1]))],
                             input_length=6, target_length=6)
  np.testing.assert_array_equal(row["encoder_input_tokens"], [5, 6, 1, 8, 1, 0])
  np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(row["encoder_positions"], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [7, 1, 9, 4, 1, 0])
  # Decoder inputs restart with 0 at each segment: no token leaks across the boundary.
  np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 7, 0, 9, 4, 0])
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 0, 1, 2, 0])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [1, 1, 1, 1, 1, 0])


def _unpack(batch):
  """Recovers the (inputs, targets) of every segment of every row."""
  out = []
  for r in range(batch["encoder_input_tokens"].shape[0]):
    segs = batch["encoder_segment_ids"][r]
    for s in np.unique(segs[segs > 0]):
      dec = batch["decoder_segment_ids"][r] == s
      out.append((tuple(batch["encoder_input_tokens"][r][segs == s]),
                  tuple(batch["decoder_target_tokens"][r][dec])))
  return out


def test_packer_keeps_every_example_exactly_once():
  rng = np.random.default_rng(0)
  examples = [_example(int(rng.integers(2, 60)), int(rng.integers(2, 20)), start=10 + k) for k in range(300)]
  packer = packing.BestFitPacker(iter(examples), batch_size=4, input_length=128, target_length=32)
  seen = [pair for batch in packer for pair in _unpack(batch)]
  expected = [(tuple(e["inputs"]), tuple(e["targets"])) for e in examples]
  assert sorted(seen) == sorted(expected)
  assert packer.counts.examples == 300 and packer.counts.truncated_inputs == 0


def test_packer_is_deterministic_and_fills_rows():
  rng = np.random.default_rng(1)
  examples = [_example(int(rng.integers(20, 120)), int(rng.integers(2, 20))) for _ in range(2000)]
  run = lambda: list(packing.BestFitPacker(iter(examples), 8, 512, 128))
  a, b = run(), run()
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in packing.FEATURES:
      np.testing.assert_array_equal(x[k], y[k])
  # All but the last (draining) batches: the encoder side is nearly full.
  fill = [np.mean(batch["encoder_segment_ids"] > 0) for batch in a[:-3]]
  assert np.mean(fill) > 0.95, np.mean(fill)


def test_truncation_keeps_eos_and_is_counted():
  packer = packing.BestFitPacker(iter([_example(50, 30)]), batch_size=1, input_length=16, target_length=8)
  batch = next(packer)
  assert batch["encoder_input_tokens"][0, 15] == EOS_ID and batch["decoder_target_tokens"][0, 7] == EOS_ID
  assert packer.counts.truncated_inputs == 1 and packer.counts.truncated_targets == 1


def test_example_without_targets_is_an_error():
  bad = {"inputs": np.array([5, 1], np.int32), "targets": np.array([EOS_ID], np.int32)}
  with pytest.raises(ValueError, match="no target tokens"):
    next(packing.BestFitPacker(iter([bad]), batch_size=1, input_length=8, target_length=8))


def test_batch_counts_by_hand():
  row = packing.assemble_row([(np.array([5, 6, 1]), np.array([7, 1])), (np.array([8, 1]), np.array([9, 1]))], 6, 4)
  single = packing.assemble_row([(np.array([5, 1]), np.array([1, 1]))], 6, 4)
  batch = {k: np.stack([row[k], single[k]]) for k in packing.FEATURES}
  assert packing.batch_counts(batch) == {"tokens": 5 + 4 + 2 + 2, "slots": 2 * (6 + 4), "examples": 3}

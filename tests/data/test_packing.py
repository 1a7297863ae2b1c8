"""Best-fit packing: layouts by hand, never splitting, truncation, determinism, efficiency, converters."""

import numpy as np
import pytest
import tensorflow as tf

from sft_jax.data import feature_converters, packing
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


@pytest.mark.parametrize("input_length, bad", [
    (8, {"inputs": np.array([5, 1], np.int32), "targets": np.array([EOS_ID], np.int32)}),
    (None, {"inputs": np.array([5, 1], np.int32), "targets": np.array([EOS_ID], np.int32)}),
    (None, {"targets": np.array([5, 6, 1], np.int32), "loss_weights": np.array([0, 0, 0], np.int32)}),
])
def test_example_without_targets_is_an_error(input_length, bad):
  with pytest.raises(ValueError, match="example with no target tokens"):
    next(packing.BestFitPacker(iter([bad]), batch_size=1, input_length=input_length, target_length=8))


def test_batch_counts_by_hand():
  row = packing.assemble_row([(np.array([5, 6, 1]), np.array([7, 1])), (np.array([8, 1]), np.array([9, 1]))], 6, 4)
  single = packing.assemble_row([(np.array([5, 1]), np.array([1, 1]))], 6, 4)
  batch = {k: np.stack([row[k], single[k]]) for k in packing.FEATURES}
  assert packing.batch_counts(batch) == {"tokens": 5 + 4 + 2 + 2, "slots": 2 * (6 + 4), "examples": 3}
  # Decoder-only: both examples share the first row, the second row is padding.
  decoder = next(packing.BestFitPacker(iter(PROMPTED), 2, None, 8))
  assert packing.batch_counts(decoder) == {"tokens": 8, "slots": 16, "examples": 2}


def test_bad_settings_are_rejected():
  with pytest.raises(ValueError, match="overlong must be one of"):
    packing.BestFitRowPacker(iter([]), None, 8, overlong="split")
  with pytest.raises(ValueError, match="decoder-only"):
    packing.BestFitRowPacker(iter([]), 8, 8, bos_id=2)


# ---- Best-fit decreasing: hand-worked layouts ---------------------------------


def _lm(n, start=10):
  """A decoder-only {"targets"} example of n tokens ending in EOS (loss on all of them)."""
  return {"targets": np.append(np.arange(start, start + n - 1, dtype=np.int32), EOS_ID)}


def _rows(packer):
  return [{k: r[k] for k in packer.features} for r in packer]


def test_best_fit_decreasing_order_by_hand():
  # Lengths 4, 2, 7, 4 into rows of 10, largest first: 7 opens row A (3 free); 4 does not
  # fit A and opens row B (6 free); the second 4 goes to B (2 free); the 2 fits A and B
  # and goes to B, where it leaves no free slot (first-fit would have put it in A).
  stream = [_lm(4, 10), _lm(2, 20), _lm(7, 30), _lm(4, 40)]
  rows = _rows(packing.BestFitRowPacker(iter(stream), None, 10, buffer_size=10))
  assert len(rows) == 2
  np.testing.assert_array_equal(rows[0]["decoder_target_tokens"], [30, 31, 32, 33, 34, 35, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]["decoder_segment_ids"], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[0]["decoder_loss_weights"], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[1]["decoder_target_tokens"], [10, 11, 12, 1, 40, 41, 42, 1, 20, 1])
  np.testing.assert_array_equal(rows[1]["decoder_input_tokens"], [0, 10, 11, 12, 0, 40, 41, 42, 0, 20])
  np.testing.assert_array_equal(rows[1]["decoder_segment_ids"], [1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
  np.testing.assert_array_equal(rows[1]["decoder_positions"], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])


def test_last_row_stays_open_for_the_next_buffer():
  # Buffers of 2. Buffer 1 (6, 4): row A = [6]; row B = [4] is the last opened and
  # still has room, so it waits. Buffer 2 (4, 2): the 4 fills B, the 2 opens row C.
  stream = [_lm(6, 10), _lm(4, 20), _lm(4, 30), _lm(2, 40)]
  rows = _rows(packing.BestFitRowPacker(iter(stream), None, 8, buffer_size=2))
  np.testing.assert_array_equal(rows[0]["decoder_target_tokens"], [10, 11, 12, 13, 14, 1, 0, 0])
  np.testing.assert_array_equal(rows[1]["decoder_target_tokens"], [20, 21, 22, 1, 30, 31, 32, 1])
  np.testing.assert_array_equal(rows[2]["decoder_target_tokens"], [40, 1, 0, 0, 0, 0, 0, 0])
  assert len(rows) == 3


def test_encoder_decoder_rows_fit_both_sides_by_hand():
  a = {"inputs": np.array([5, 6, 1]), "targets": np.array([7, 1])}  # 5 tokens
  b = {"inputs": np.array([8, 9, 4, 1]), "targets": np.array([3, 1])}  # 6 tokens
  c = {"inputs": np.array([2, 1]), "targets": np.array([6, 5, 1])}  # 5 tokens
  # Order b, a, c. b opens row 1 (2 + 3 free); a's inputs do not fit there, so it opens
  # row 2 (3 + 3 free); c fits both and leaves 0 free slots in row 1, 1 in row 2: row 1.
  first, second = _rows(packing.BestFitRowPacker(iter([a, b, c]), 6, 5))
  np.testing.assert_array_equal(first["encoder_input_tokens"], [8, 9, 4, 1, 2, 1])
  np.testing.assert_array_equal(first["encoder_segment_ids"], [1, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(first["encoder_positions"], [0, 1, 2, 3, 0, 1])
  np.testing.assert_array_equal(first["decoder_target_tokens"], [3, 1, 6, 5, 1])
  np.testing.assert_array_equal(first["decoder_input_tokens"], [0, 3, 0, 6, 5])
  np.testing.assert_array_equal(first["decoder_segment_ids"], [1, 1, 2, 2, 2])
  np.testing.assert_array_equal(first["decoder_positions"], [0, 1, 0, 1, 2])
  np.testing.assert_array_equal(first["decoder_loss_weights"], [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(second["encoder_input_tokens"], [5, 6, 1, 0, 0, 0])
  np.testing.assert_array_equal(second["encoder_segment_ids"], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(second["decoder_input_tokens"], [0, 7, 0, 0, 0])
  np.testing.assert_array_equal(second["decoder_loss_weights"], [1, 1, 0, 0, 0])


PROMPTED = [{"inputs": np.array([5, 6]), "targets": np.array([7, 1])},
            {"inputs": np.array([8]), "targets": np.array([9, 4, 1])}]


@pytest.mark.parametrize("bos_id, inputs", [
    # seqio: targets shifted right within each segment, 0 at the segment start.
    (None, [0, 5, 6, 7, 0, 8, 9, 4]),
    # Causal LM: BOS prefixed, input = seq[:-1], target = seq[1:]; the row holds the same targets.
    (2, [2, 5, 6, 7, 2, 8, 9, 4]),
])
def test_decoder_only_prompt_and_target_by_hand(bos_id, inputs):
  (row,) = _rows(packing.BestFitRowPacker(iter(PROMPTED), None, 8, bos_id=bos_id))
  np.testing.assert_array_equal(row["decoder_target_tokens"], [5, 6, 7, 1, 8, 9, 4, 1])
  np.testing.assert_array_equal(row["decoder_input_tokens"], inputs)
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 3, 0, 1, 2, 3])
  # Loss on the targets only, EOS included.
  np.testing.assert_array_equal(row["decoder_loss_weights"], [0, 0, 1, 1, 0, 1, 1, 1])


CHAT = {"targets": np.array([3, 5, 6, 7, 1]), "loss_weights": np.array([0, 0, 1, 1, 1])}


@pytest.mark.parametrize("bos_id, targets, inputs, weights", [
    (None, [3, 5, 6, 7, 1, 0], [0, 3, 5, 6, 7, 0], [0, 0, 1, 1, 1, 0]),
    # The chat already starts with BOS (3): no second one; weights follow the targets.
    (3, [5, 6, 7, 1, 0, 0], [3, 5, 6, 7, 0, 0], [0, 1, 1, 1, 0, 0]),
    # Another BOS (2) is prefixed.
    (2, [3, 5, 6, 7, 1, 0], [2, 3, 5, 6, 7, 0], [0, 0, 1, 1, 1, 0]),
])
def test_decoder_only_weighted_chat_by_hand(bos_id, targets, inputs, weights):
  (row,) = _rows(packing.BestFitRowPacker(iter([CHAT]), None, 6, bos_id=bos_id))
  np.testing.assert_array_equal(row["decoder_target_tokens"], targets)
  np.testing.assert_array_equal(row["decoder_input_tokens"], inputs)
  np.testing.assert_array_equal(row["decoder_loss_weights"], weights)
  n = int(np.sum(np.asarray(targets) > 0))
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1] * n + [0] * (6 - n))
  np.testing.assert_array_equal(row["decoder_positions"][:n], np.arange(n))


# ---- Properties on random streams ---------------------------------------------


def _random_decoder_stream(n, seed, max_len=300):
  rng = np.random.default_rng(seed)
  lengths = np.clip(np.exp(rng.normal(np.log(40), 0.9, n)).astype(int), 3, max_len)
  stream = []
  for k, total in enumerate(lengths):
    tokens = rng.integers(2, 1000, total).astype(np.int32)
    tokens[-1] = EOS_ID
    split = int(rng.integers(1, total - 1))  # a prompt token, and a target token besides EOS
    stream.append({"inputs": tokens[:split], "targets": tokens[split:]} if k % 2 else
                  {"targets": tokens, "loss_weights": (np.arange(total) >= split).astype(np.int32)})
  return stream


def _decoder_segments(rows):
  """(target tokens, loss weights) of every segment of every row, checking each is contiguous."""
  out = []
  for row in rows:
    seg = row["decoder_segment_ids"]
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      assert len(where) and np.all(np.diff(where) == 1), "an example was split"
      np.testing.assert_array_equal(row["decoder_positions"][where], np.arange(len(where)))
      out.append((tuple(row["decoder_target_tokens"][where]), tuple(row["decoder_loss_weights"][where])))
    assert np.all(seg[:np.sum(seg > 0)] > 0)  # padding only at the end
  return out


def test_decoder_only_never_splits_and_keeps_every_example():
  stream = _random_decoder_stream(500, seed=2, max_len=256)
  packer = packing.BestFitRowPacker(iter(stream), None, 256, buffer_size=64)
  seen = _decoder_segments(_rows(packer))
  expected = []
  for ex in stream:
    if "inputs" in ex:
      tokens = np.concatenate([ex["inputs"], ex["targets"]])
      weights = np.r_[np.zeros(len(ex["inputs"])), np.ones(len(ex["targets"]))]
    else:
      tokens, weights = ex["targets"], ex["loss_weights"]
    expected.append((tuple(tokens), tuple(weights.astype(int))))
  assert sorted(seen) == sorted(expected)
  assert packer.counts == packing.PackingCounts(examples=500)


@pytest.mark.parametrize("input_length", [None, 96])
def test_output_is_a_function_of_stream_and_settings(input_length):
  stream = (_random_decoder_stream(400, seed=3) if input_length is None else
            [_example(int(n), int(m)) for n, m in np.random.default_rng(3).integers(2, 60, (400, 2))])
  run = lambda: _rows(packing.BestFitRowPacker(iter(stream), input_length, 128, buffer_size=50))
  a, b = run(), run()
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # A resumed run that skips the rows already consumed continues identically.
  resumed = packing.BestFitRowPacker(iter(stream), input_length, 128, buffer_size=50)
  for _ in range(7):
    next(resumed)
  np.testing.assert_array_equal(next(resumed)["decoder_target_tokens"], a[7]["decoder_target_tokens"])


def test_truncate_and_drop_are_counted():
  fits, too_long = _lm(10), _lm(40, start=100)
  # A chat whose first (unweighted) turn alone fills the row; a prompted example instead
  # gives up the start of its prompt (test_decoder_only_truncation_keeps_targets_by_hand).
  prompt_only = {"targets": np.r_[np.arange(10, 40), 7, EOS_ID].astype(np.int32),
                 "loss_weights": np.r_[np.zeros(30), 1, 1].astype(np.int32)}
  stream = [fits, too_long, prompt_only, fits]

  truncating = packing.BestFitRowPacker(iter(stream), None, 16)
  segments = _decoder_segments(_rows(truncating))
  # The long one is cut to the row and ends in EOS; the prompt that fills the row has no target left.
  assert sorted(len(t) for t, _ in segments) == [10, 10, 16]
  cut = [t for t, _ in segments if len(t) == 16][0]
  assert cut[:15] == tuple(range(100, 115)) and cut[-1] == EOS_ID
  assert (truncating.counts.examples, truncating.counts.truncated, truncating.counts.dropped) == (4, 1, 1)

  dropping = packing.BestFitRowPacker(iter(stream), None, 16, overlong="drop")
  assert sorted(len(t) for t, _ in _decoder_segments(_rows(dropping))) == [10, 10]
  assert (dropping.counts.examples, dropping.counts.truncated, dropping.counts.dropped) == (4, 0, 2)

  encdec = packing.BestFitRowPacker(iter([_example(50, 30), _example(5, 5)]), 16, 8, overlong="drop")
  assert len(list(encdec)) == 1 and encdec.counts.dropped == 1


@pytest.mark.parametrize("length, targets, weights", [
    (6, [3, 4, 5, 6, 7, 1], [0, 0, 1, 1, 0, 0]),  # cut in a user turn: the EOS is not a target
    (4, [3, 4, 5, 1], [0, 0, 1, 1]),  # cut in a response: the EOS is learned
    (2, None, None),  # only prompt left: dropped
])
def test_truncated_chat_weights(length, targets, weights):
  chat = {"targets": np.array([3, 4, 5, 6, 7, 8, 9, 1]), "loss_weights": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
  packer = packing.BestFitRowPacker(iter([chat]), None, length)
  rows = _rows(packer)
  if targets is None:
    assert rows == [] and packer.counts.dropped == 1
  else:
    np.testing.assert_array_equal(rows[0]["decoder_target_tokens"], targets)
    np.testing.assert_array_equal(rows[0]["decoder_loss_weights"], weights)
    assert packer.counts.truncated == packer.counts.truncated_targets == 1


def _next_fit_efficiency(lengths, length):
  """Token efficiency of next-fit in stream order (what seqio's trim_and_pack does)."""
  rows, free = 1, length
  for n in np.minimum(lengths, length):
    if n > free:
      rows, free = rows + 1, length
    free -= n
  return float(np.minimum(lengths, length).sum()) / (rows * length)


@pytest.mark.parametrize("length", [256, 1024])
def test_best_fit_is_at_least_as_dense_as_next_fit(length):
  stream = _random_decoder_stream(2000, seed=4, max_len=2000)
  rows = _rows(packing.BestFitRowPacker(iter(stream), None, length, buffer_size=256))
  best_fit = float(np.mean([np.mean(r["decoder_segment_ids"] > 0) for r in rows]))
  next_fit = _next_fit_efficiency(np.array([sum(len(v) for k, v in ex.items() if k != "loss_weights")
                                            for ex in stream]), length)
  assert best_fit >= next_fit and best_fit > 0.98, (best_fit, next_fit)


# ---- seqio feature converters -------------------------------------------------


def _dataset(examples, keys):
  return tf.data.Dataset.from_generator(
      lambda: iter([{k: np.asarray(ex[k], np.int32) for k in keys} for ex in examples]),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys})


@pytest.mark.parametrize("kind", ["encdec", "prompted", "chat"])
def test_feature_converter_rows_equal_the_packer_rows(kind):
  if kind == "encdec":
    stream = [_example(int(n), int(m)) for n, m in np.random.default_rng(5).integers(2, 40, (120, 2))]
    converter, lengths = feature_converters.BestFitEncDecFeatureConverter(buffer_size=32), {"inputs": 64, "targets": 48}
    packer = packing.BestFitRowPacker(iter(stream), 64, 48, buffer_size=32)
    keys = ("inputs", "targets")
  else:
    keys = ("inputs", "targets") if kind == "prompted" else ("targets", "loss_weights")
    stream = [ex for ex in _random_decoder_stream(300, seed=6) if set(ex) == set(keys)]
    converter = feature_converters.BestFitDecoderFeatureConverter(buffer_size=32, bos_id=2)
    lengths = {"inputs": 100, "targets": 28} if kind == "prompted" else {"targets": 128, "loss_weights": 128}
    packer = packing.BestFitRowPacker(iter(stream), None, 128, buffer_size=32, bos_id=2,
                                      prompt_length=100 if kind == "prompted" else None)
  converted = list(converter(_dataset(stream, keys), lengths).as_numpy_iterator())
  expected = _rows(packer)
  assert len(converted) == len(expected) > 1
  for got, want in zip(converted, expected):
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert converter.counts == packer.counts


def test_decoder_converter_feature_lengths():
  converter = feature_converters.BestFitDecoderFeatureConverter()
  assert converter.get_model_feature_lengths({"inputs": 100, "targets": 28}) == dict.fromkeys(
      packing.DECODER_FEATURES, 128)
  with pytest.raises(ValueError, match="either a prompt or per-token loss weights"):
    converter(_dataset([CHAT], ("targets", "loss_weights")), {"inputs": 4, "targets": 4, "loss_weights": 4})


def test_shuffle_seed_permutes_rows_within_a_round_only():
  """Shuffled rows are the same rows, in a seeded order, and the stream is reproducible."""
  rng = np.random.default_rng(7)
  examples = [{"inputs": np.append(rng.integers(3, 50, rng.integers(2, 40)), 1).astype(np.int32),
               "targets": np.append(rng.integers(3, 50, rng.integers(1, 6)), 1).astype(np.int32)}
              for _ in range(300)]

  def rows(seed):
    packer = packing.BestFitRowPacker(iter(examples), 64, 8, buffer_size=100, shuffle_seed=seed)
    return [tuple(r["encoder_input_tokens"]) for r in packer]

  plain, shuffled = rows(None), rows(0)
  assert sorted(plain) == sorted(shuffled) and plain != shuffled
  assert shuffled == rows(0) and shuffled != rows(1)
  # Without shuffling, the first row of a round holds its largest example.
  first = packing.BestFitRowPacker(iter(examples), 64, 8, buffer_size=100)
  first_row = next(first)
  longest = max(len(e["inputs"]) + len(e["targets"]) for e in examples[:100])
  assert int((first_row["encoder_segment_ids"] > 0).sum() + (first_row["decoder_segment_ids"] > 0).sum()) >= longest

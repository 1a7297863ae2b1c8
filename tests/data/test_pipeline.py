"""Tests for the training input helpers."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from sft_jax.data import pipeline


def test_iterate_numpy_matches_one_by_one_conversion_in_order():
  rng = np.random.default_rng(0)
  examples = [{"inputs": rng.integers(3, 50, size=rng.integers(1, 9)).astype(np.int32),
               "targets": rng.integers(3, 50, size=rng.integers(1, 5)).astype(np.int32),
               "inputs_pretokenized": f"example {i}"} for i in range(11)]
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
                        "inputs_pretokenized": tf.TensorSpec([], tf.string)})
  # A chunk size that does not divide the count: the last chunk is partial.
  got = list(pipeline.iterate_numpy(dataset, ("inputs", "targets"), chunk_size=4))
  assert len(got) == len(examples)
  for ex, out in zip(examples, got):
    assert set(out) == {"inputs", "targets"}
    np.testing.assert_array_equal(out["inputs"], ex["inputs"])  # padding stripped exactly
    np.testing.assert_array_equal(out["targets"], ex["targets"])


def test_prefetcher_hands_over_items_in_order_then_stops():
  prefetcher = pipeline._Prefetcher(lambda: iter(range(7)), depth=2)
  assert [next(prefetcher) for _ in range(7)] == list(range(7))
  for _ in range(2):  # stays exhausted
    with pytest.raises(StopIteration):
      next(prefetcher)
  prefetcher.close()


def test_prefetcher_raises_the_producers_error_in_the_reader():
  def failing():
    yield 1
    raise ValueError("bad example in file x.jsonl line 3")

  prefetcher = pipeline._Prefetcher(failing, depth=4)
  assert next(prefetcher) == 1
  with pytest.raises(ValueError, match="x.jsonl line 3"):
    next(prefetcher)
  prefetcher.close()


def test_prefetcher_close_stops_a_producer_blocked_on_a_full_queue():
  produced = []

  def endless():
    for i in itertools.count():
      produced.append(i)
      yield i

  prefetcher = pipeline._Prefetcher(endless, depth=1)
  assert next(prefetcher) == 0
  prefetcher.close()  # returns: the thread gave up its blocked put
  assert not prefetcher._thread.is_alive() and len(produced) <= 4

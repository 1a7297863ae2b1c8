"""Tests for the training input helpers."""

import numpy as np
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

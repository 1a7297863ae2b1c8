"""Relative position buckets and attention masks."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.models import attention


def _reference_bucket(relative_position: int, bidirectional: bool, num_buckets: int,
                      max_distance: int) -> int:
  """T5 paper / mesh-tensorflow bucketing, one scalar at a time in float32."""
  bucket = 0
  distance = -relative_position  # positive when the key precedes the query
  if bidirectional:
    num_buckets //= 2
    if distance < 0:
      bucket += num_buckets
    distance = abs(distance)
  else:
    distance = max(distance, 0)
  exact = num_buckets // 2
  if distance < exact:
    return bucket + distance
  scaled = (np.log(np.float32(distance) / np.float32(exact))
            / np.float32(math.log(max_distance / exact)) * np.float32(num_buckets - exact))
  return bucket + min(exact + int(scaled), num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20)])
def test_relative_position_bucket_matches_reference(bidirectional, num_buckets, max_distance):
  relative = np.arange(-300, 301)
  got = np.asarray(attention.relative_position_bucket(
      jnp.asarray(relative), bidirectional, num_buckets, max_distance))
  want = np.array([_reference_bucket(int(r), bidirectional, num_buckets, max_distance)
                   for r in relative])
  np.testing.assert_array_equal(got, want)
  assert got.min() >= 0 and got.max() < num_buckets


@pytest.mark.parametrize("relative,bidirectional,bucket", [
    # bidirectional, 32 buckets, max distance 128: keys before the query use buckets 0..15.
    (0, True, 0), (-1, True, 1), (-7, True, 7), (-8, True, 8),
    (-20, True, 10),   # 8 + floor(8 * ln(20/8) / ln(16)) = 8 + 2
    (-50, True, 13),   # 8 + floor(8 * ln(50/8) / ln(16)) = 8 + 5
    (-100, True, 15), (-1000, True, 15),
    (1, True, 17), (8, True, 24), (20, True, 26), (1000, True, 31),
    # causal: future keys share bucket 0, 16 exact buckets.
    (5, False, 0), (-5, False, 5), (-15, False, 15),
    (-20, False, 17),  # 16 + floor(16 * ln(20/16) / ln(8)) = 16 + 1
    (-40, False, 23),  # 16 + floor(16 * ln(40/16) / ln(8)) = 16 + 7
    (-127, False, 31), (-1000, False, 31),
])
def test_relative_position_bucket_hand_values(relative, bidirectional, bucket):
  got = attention.relative_position_bucket(jnp.asarray([relative]), bidirectional, 32, 128)
  assert int(got[0]) == bucket


def test_mask_segments_and_causality():
  q_seg = jnp.asarray([[1, 1, 2, 0]])
  mask = np.asarray(attention.make_attention_mask(q_seg, q_seg, causal=True))[0, 0]
  want = np.array([[1, 0, 0, 0],
                   [1, 1, 0, 0],
                   [0, 0, 1, 0],
                   [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, want)


def test_fully_masked_rows_are_finite():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 3, 2, 4)), jnp.float32) for _ in range(3))
  seg = jnp.asarray([[1, 0, 0]])
  out = attention.dot_product_attention(q, k, v, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg,
                                        causal=True)
  assert np.all(np.isfinite(np.asarray(out)))
  # The one real query sees only itself: its output is its own value vector.
  np.testing.assert_allclose(np.asarray(out[0, 0]), np.asarray(v[0, 0]), rtol=1e-6)


def test_unknown_attention_impl():
  x = jnp.zeros((1, 2, 1, 4))
  seg = jnp.ones((1, 2), jnp.int32)
  with pytest.raises(NotImplementedError, match="pallas"):
    attention.dot_product_attention(x, x, x, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg,
                                     causal=False, impl="pallas")
  with pytest.raises(ValueError, match="flash"):
    attention.dot_product_attention(x, x, x, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg,
                                    causal=False, impl="flash")

"""Relative position buckets, attention masks and the attention implementations' dispatch."""

import math

from flax import nnx
import jax
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
  with pytest.raises(ValueError, match="flash"):
    attention.dot_product_attention(x, x, x, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg,
                                    causal=False, impl="flash")


def _qkv_and_packing(seed, batch=2, length=40, heads=2, head_dim=8):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
             for _ in range(3))
  seg = np.zeros((batch, length), np.int32)
  seg[0, :15], seg[0, 15:33] = 1, 2  # two packed examples, then padding
  seg[1, :length - 5] = 1
  # Positions restart per segment, as the packer writes them.
  pos = np.zeros_like(seg)
  for row in range(batch):
    for s in set(seg[row]) - {0}:
      pos[row, seg[row] == s] = np.arange(np.sum(seg[row] == s))
  return q, k, v, jnp.asarray(seg), jnp.asarray(pos)


@pytest.mark.parametrize("causal", [False, True])
def test_pallas_impl_matches_xla_on_rows_that_see_keys(causal):
  q, k, v, seg, pos = _qkv_and_packing(0)
  relpos = attention.RelativePositionBias(32, 128, 2, bidirectional=not causal,
                                          rngs=nnx.Rngs(params=0))
  # Pallas gets the table, xla the dense bias from per-segment positions: the same numbers.
  dense = relpos.self_attention_bias(pos, "xla")
  table = relpos.self_attention_bias(pos, "pallas")
  assert isinstance(table, attention.RelativeBias) and table.table_NxH.shape == (32, 2)

  def run(impl, bias):
    return jax.jit(lambda q, k, v: attention.dot_product_attention(
        q, k, v, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg, causal=causal,
        bias_BxHxQxK=bias, impl=impl))(q, k, v)

  want = np.asarray(run("xla", dense))
  got = np.asarray(run("pallas", table))
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
  assert not np.any(got[~real]), "padding queries give zeros in the kernel"
  # The table with the xla impl is materialized over token indices: equal on the real rows too.
  np.testing.assert_allclose(np.asarray(run("xla", table))[real], want[real], rtol=1e-5,
                             atol=1e-5)


def test_cudnn_is_refused_off_gpu():
  q, k, v, seg, _ = _qkv_and_packing(1)
  if jax.default_backend() == "gpu":
    pytest.skip("cuDNN runs here")
  with pytest.raises(ValueError, match=f"cudnn.*{jax.default_backend()}"):
    attention.dot_product_attention(q, k, v, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg,
                                    causal=True, impl="cudnn")


def test_attention_dropout_only_in_xla():
  q, k, v, seg, _ = _qkv_and_packing(2)
  with pytest.raises(ValueError, match="no attention dropout"):
    attention.dot_product_attention(q, k, v, q_segment_ids_BxQ=seg, kv_segment_ids_BxK=seg,
                                    causal=False, dropout_rate=0.1,
                                    dropout_rng=jax.random.key(0), impl="pallas")

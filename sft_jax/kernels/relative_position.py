"""T5 relative-position buckets, shared by the attention kernels and the models.

The bucket function is elementwise jnp arithmetic, so the flash-attention kernel evaluates the very
same function on each block's index differences that the XLA paths evaluate on position tensors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """T5 bucket of `memory_position - query_position` (mesh-tensorflow `_relative_position_bucket`).

  Half the buckets hold exact small distances, the rest grow logarithmically up to
  `max_distance`; beyond it everything shares the last bucket. Bidirectional buckets split the
  range between keys before (low half) and after (high half) the query.
  """
  n = -jnp.asarray(relative_position, jnp.int32)
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Clamping below at max_exact avoids log(0); those entries take the `is_small` branch anyway.
  n_large = jnp.maximum(n, max_exact).astype(jnp.float32)
  log_ratio = jnp.log(n_large / max_exact) / math.log(max_distance / max_exact)
  val_if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


def relative_bias_from_table(table_NxH: jax.Array, q_len: int, kv_len: int, *,
                             bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """Dense float32 bias [H, Q, K] with entry (h, i, j) = table_NxH[bucket(j - i), h].

  Token indices stand in for positions: in a packed row positions restart per segment and
  segments are contiguous, so within a segment `j - i` equals the position difference, and
  pairs across segments are masked anyway.
  """
  relative_QxK = jnp.arange(kv_len)[None, :] - jnp.arange(q_len)[:, None]
  buckets_QxK = relative_position_bucket(relative_QxK, bidirectional, num_buckets, max_distance)
  bias_QxKxH = jnp.take(table_NxH.astype(jnp.float32), buckets_QxK, axis=0)
  return jnp.transpose(bias_QxKxH, (2, 0, 1))

"""Multi-head attention with segment-id masks and T5 relative position biases.

`dot_product_attention` dispatches on `impl`; masks are described by segment ids (and a causal
flag) rather than dense matrices so that fused kernels can build them on the fly.
"""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp

from sft_jax.models import layers

# Finite, so a query row with no visible key (padding) softmaxes to a uniform row instead of NaN.
MASK_VALUE = -1e10
ATTENTION_IMPLS = ("xla", "cudnn", "pallas")


def make_attention_mask(q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array, *,
                        causal: bool) -> jax.Array:
  """Boolean [B, 1, Q, K] mask: same segment, key not padding, and key index <= query index if causal."""
  same_segment_BxQxK = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :]
  mask_BxQxK = same_segment_BxQxK & (kv_segment_ids_BxK[:, None, :] != 0)
  if causal:
    q_len, kv_len = q_segment_ids_BxQ.shape[1], kv_segment_ids_BxK.shape[1]
    causal_QxK = jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
    mask_BxQxK = mask_BxQxK & causal_QxK[None, :, :]
  return mask_BxQxK[:, None, :, :]


def _xla_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask_Bx1xQxK, bias_BxHxQxK, dropout_rate,
                   dropout_rng):
  # Logits and softmax in float32: bf16 logits lose the small relative-position differences.
  logits_BxHxQxK = jnp.einsum("bqhd,bkhd->bhqk", q_BxQxHxD, k_BxKxHxD,
                              preferred_element_type=jnp.float32)
  if bias_BxHxQxK is not None:
    logits_BxHxQxK = logits_BxHxQxK + bias_BxHxQxK.astype(jnp.float32)
  logits_BxHxQxK = jnp.where(mask_Bx1xQxK, logits_BxHxQxK, MASK_VALUE)
  probs_BxHxQxK = jax.nn.softmax(logits_BxHxQxK, axis=-1)
  probs_BxHxQxK = layers.dropout(probs_BxHxQxK, dropout_rate, dropout_rng)
  return jnp.einsum("bhqk,bkhd->bqhd", probs_BxHxQxK.astype(v_BxKxHxD.dtype), v_BxKxHxD)


def dot_product_attention(q_BxQxHxD: jax.Array, k_BxKxHxD: jax.Array, v_BxKxHxD: jax.Array, *,
                          q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array,
                          causal: bool, bias_BxHxQxK: jax.Array | None = None,
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                          impl: str = "xla") -> jax.Array:
  """Unscaled (T5-style) attention; a query sees keys of its own non-zero segment only."""
  if impl == "xla":
    mask_Bx1xQxK = make_attention_mask(q_segment_ids_BxQ, kv_segment_ids_BxK, causal=causal)
    return _xla_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask_Bx1xQxK, bias_BxHxQxK,
                          dropout_rate, dropout_rng)
  if impl in ATTENTION_IMPLS:
    raise NotImplementedError(f"attention_impl={impl!r} is not implemented yet; use 'xla'.")
  raise ValueError(f"Unknown attention_impl={impl!r}; expected one of {ATTENTION_IMPLS}.")


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


class RelativePositionBias(nnx.Module):
  """Learned per-head scalar bias indexed by the bucket of each (query, key) position pair."""

  def __init__(self, num_buckets: int, max_distance: int, num_heads: int, *, bidirectional: bool,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.num_buckets = num_buckets
    self.max_distance = max_distance
    self.bidirectional = bidirectional
    init = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    self.embedding = layers.logical_param(
        init(rngs.params(), (num_heads, num_buckets), param_dtype), ("heads", "relpos_buckets"))

  def __call__(self, q_positions_BxQ: jax.Array, k_positions_BxK: jax.Array) -> jax.Array:
    """Returns the float32 bias [B, H, Q, K] from per-token positions (which restart per segment)."""
    relative_BxQxK = k_positions_BxK[:, None, :] - q_positions_BxQ[:, :, None]
    buckets_BxQxK = relative_position_bucket(
        relative_BxQxK, self.bidirectional, self.num_buckets, self.max_distance)
    table_HxN = self.embedding[...].astype(jnp.float32)
    bias_HxBxQxK = jnp.take(table_HxN, buckets_BxQxK, axis=1)
    return jnp.transpose(bias_HxBxQxK, (1, 0, 2, 3))


class MultiHeadAttention(nnx.Module):
  """T5 attention block (no biases, no logit scaling); projections exposed for KV caching."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int, *, dropout_rate: float = 0.0,
               attention_impl: str = "xla", dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    self.attention_impl = attention_impl
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = layers.DenseGeneral((d_model,), (num_heads, head_dim), ("embed", "heads", "kv"),
                                     kernel_init=layers.attention_query_init(head_dim), **kw)
    self.key = layers.DenseGeneral((d_model,), (num_heads, head_dim), ("embed", "heads", "kv"), **kw)
    self.value = layers.DenseGeneral((d_model,), (num_heads, head_dim), ("embed", "heads", "kv"),
                                     **kw)
    self.out = layers.DenseGeneral((num_heads, head_dim), (d_model,), ("heads", "kv", "embed"), **kw)

  def project_kv(self, inputs_kv_BxKxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values [B, K, H, D_head] of `inputs_kv_BxKxD`."""
    return self.key(inputs_kv_BxKxD), self.value(inputs_kv_BxKxD)

  def attend(self, inputs_q_BxQxD: jax.Array, k_BxKxHxD: jax.Array, v_BxKxHxD: jax.Array, *,
             q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array, causal: bool,
             bias_BxHxQxK: jax.Array | None = None,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """Attends queries projected from `inputs_q_BxQxD` to given keys/values; returns [B, Q, D]."""
    q_BxQxHxD = self.query(inputs_q_BxQxD)
    out_BxQxHxD = dot_product_attention(
        q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids_BxQ=q_segment_ids_BxQ,
        kv_segment_ids_BxK=kv_segment_ids_BxK, causal=causal, bias_BxHxQxK=bias_BxHxQxK,
        dropout_rate=self.dropout_rate, dropout_rng=dropout_rng, impl=self.attention_impl)
    return self.out(out_BxQxHxD)

  def __call__(self, inputs_q_BxQxD: jax.Array, inputs_kv_BxKxD: jax.Array, *,
               q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array, causal: bool,
               bias_BxHxQxK: jax.Array | None = None,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Full attention of `inputs_q_BxQxD` over `inputs_kv_BxKxD`; returns [B, Q, D]."""
    k_BxKxHxD, v_BxKxHxD = self.project_kv(inputs_kv_BxKxD)
    return self.attend(inputs_q_BxQxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids_BxQ=q_segment_ids_BxQ,
                       kv_segment_ids_BxK=kv_segment_ids_BxK, causal=causal,
                       bias_BxHxQxK=bias_BxHxQxK, dropout_rng=dropout_rng)

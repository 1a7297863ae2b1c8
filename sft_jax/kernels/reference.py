"""Plain-XLA attention with exactly the semantics of `flash_attention`, used as its test oracle.

Shape letters: B batch, Q query length, K key length, H query heads, G key/value heads (one per
group of H // G query heads), D head dim, N relative-position buckets.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sft_jax.kernels import relative_position

# Finite, so softmax over a fully masked row stays NaN-free; such rows are zeroed afterwards.
_MASK_VALUE = -1e30


def visibility_mask(q_segment_ids_BxQ: jax.Array | None, kv_segment_ids_BxK: jax.Array | None,
                    q_len: int, kv_len: int, *, causal: bool) -> jax.Array | None:
  """Boolean [B or 1, Q, K] of the (query, key) pairs that may attend, or None if all may.

  A query sees keys of its own non-zero segment (0 is padding) and, if causal, keys at an index
  no greater than its own (queries and keys aligned at index 0).
  """
  if (q_segment_ids_BxQ is None) != (kv_segment_ids_BxK is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  mask_BxQxK = None
  if q_segment_ids_BxQ is not None:
    kv_segment_ids_Bx1xK = kv_segment_ids_BxK[:, None, :]
    mask_BxQxK = ((q_segment_ids_BxQ[:, :, None] == kv_segment_ids_Bx1xK)
                  & (kv_segment_ids_Bx1xK != 0))
  if causal:
    causal_1xQxK = (jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :])[None]
    mask_BxQxK = causal_1xQxK if mask_BxQxK is None else mask_BxQxK & causal_1xQxK
  return mask_BxQxK


def attention_reference(q_BxQxHxD: jax.Array, k_BxKxGxD: jax.Array, v_BxKxGxD: jax.Array, *,
                        q_segment_ids: jax.Array | None = None,
                        kv_segment_ids: jax.Array | None = None, causal: bool = False,
                        bias: jax.Array | None = None,
                        relative_bias_table: jax.Array | None = None, num_buckets: int = 32,
                        max_distance: int = 128, bidirectional: bool = True,
                        sm_scale: float | None = None) -> jax.Array:
  """softmax(sm_scale * q k^T + bias + T5 bias) v in float32, returned in q's dtype.

  `sm_scale=None` means 1 / sqrt(head_dim). `bias` is dense [B or 1, H or 1, Q, K];
  `relative_bias_table` is [N, H] and adds table[bucket(j - i), h] at query i, key j. Query rows
  that see no key give zeros. GQA/MQA when k/v have G < H heads (H % G == 0).
  """
  batch, q_len, num_heads, head_dim = q_BxQxHxD.shape
  kv_len, num_kv_heads = k_BxKxGxD.shape[1], k_BxKxGxD.shape[2]
  if num_heads % num_kv_heads:
    raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads.")
  group = num_heads // num_kv_heads
  sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
  highest = jax.lax.Precision.HIGHEST  # fp32 matmuls without TF32/bf16 passes on accelerators
  q_BxQxGxRxD = q_BxQxHxD.astype(jnp.float32).reshape(batch, q_len, num_kv_heads, group, head_dim)
  logits_BxGxRxQxK = jnp.einsum("bqgrd,bkgd->bgrqk", q_BxQxGxRxD, k_BxKxGxD.astype(jnp.float32),
                                precision=highest)
  logits_BxHxQxK = logits_BxGxRxQxK.reshape(batch, num_heads, q_len, kv_len) * sm_scale
  if bias is not None:
    logits_BxHxQxK = logits_BxHxQxK + bias.astype(jnp.float32)
  if relative_bias_table is not None:
    bias_HxQxK = relative_position.relative_bias_from_table(
        relative_bias_table, q_len, kv_len, bidirectional=bidirectional,
        num_buckets=num_buckets, max_distance=max_distance)
    logits_BxHxQxK = logits_BxHxQxK + bias_HxQxK[None]
  mask_BxQxK = visibility_mask(q_segment_ids, kv_segment_ids, q_len, kv_len, causal=causal)
  if mask_BxQxK is not None:
    logits_BxHxQxK = jnp.where(mask_BxQxK[:, None], logits_BxHxQxK, _MASK_VALUE)
  probs_BxHxQxK = jax.nn.softmax(logits_BxHxQxK, axis=-1)
  if mask_BxQxK is not None:
    # Zeroes fully masked rows (softmax made them uniform); elsewhere masked probs are 0 already.
    probs_BxHxQxK = jnp.where(mask_BxQxK[:, None], probs_BxHxQxK, 0.0)
  probs_BxGxRxQxK = probs_BxHxQxK.reshape(batch, num_kv_heads, group, q_len, kv_len)
  out_BxQxGxRxD = jnp.einsum("bgrqk,bkgd->bqgrd", probs_BxGxRxQxK,
                             v_BxKxGxD.astype(jnp.float32), precision=highest)
  return out_BxQxGxRxD.reshape(batch, q_len, num_heads, head_dim).astype(q_BxQxHxD.dtype)

"""Multi-head attention with segment-id masks and T5 relative position biases.

`dot_product_attention` dispatches on `impl`; masks are described by segment ids (and a causal
flag) rather than dense matrices so that fused kernels can build them on the fly:

  xla     the einsum reference below (any backend; supports attention dropout);
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`, GPU only; segment ids become
          its boolean mask, a relative bias is materialized;
  pallas  sft_jax's flash kernel (Triton on GPU, Mosaic on TPU, interpreted on CPU); T5's
          relative bias goes in as its [buckets, heads] table and is expanded per block.
"""

from __future__ import annotations

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp

from sft_jax.kernels import flash_attention
from sft_jax.kernels import relative_position
# Re-exported: the bucket function lives with the kernels, which may not import models.
from sft_jax.kernels.relative_position import relative_position_bucket
from sft_jax.models import layers

# Finite, so a query row with no visible key (padding) softmaxes to a uniform row instead of NaN.
MASK_VALUE = -1e10
ATTENTION_IMPLS = ("xla", "cudnn", "pallas")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["table_NxH"],
                   meta_fields=["bidirectional", "num_buckets", "max_distance"])
@dataclasses.dataclass(frozen=True)
class RelativeBias:
  """A T5 relative-position bias given by its table: entry (h, i, j) is table_NxH[bucket(j - i), h].

  It stands for a dense [1, H, Q, K] bias over token indices without building one; the pallas
  kernel computes it block by block and backpropagates into the table.
  """
  table_NxH: jax.Array
  bidirectional: bool
  num_buckets: int
  max_distance: int

  def dense(self, q_len: int, kv_len: int) -> jax.Array:
    """The float32 [1, H, Q, K] bias this stands for."""
    return relative_position.relative_bias_from_table(
        self.table_NxH, q_len, kv_len, bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)[None]


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


def _cudnn_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids_BxQ, kv_segment_ids_BxK,
                     causal, bias_BxHxQxK):
  backend = jax.default_backend()
  if backend != "gpu":
    raise ValueError(f"attention_impl='cudnn' runs on GPUs only; the default backend is "
                     f"{backend!r}. Use 'xla' or 'pallas'.")
  # Causality stays out of the mask: `is_causal` lets cuDNN skip the blocks it masks.
  mask_Bx1xQxK = make_attention_mask(q_segment_ids_BxQ, kv_segment_ids_BxK, causal=False)
  if bias_BxHxQxK is not None:
    bias_BxHxQxK = bias_BxHxQxK.astype(q_BxQxHxD.dtype)
  return jax.nn.dot_product_attention(
      q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, bias=bias_BxHxQxK, mask=mask_Bx1xQxK, scale=1.0,
      is_causal=causal, implementation="cudnn")


def _pallas_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids_BxQ, kv_segment_ids_BxK,
                      causal, bias):
  relative = {}
  if isinstance(bias, RelativeBias):
    relative = dict(relative_bias_table=bias.table_NxH, num_buckets=bias.num_buckets,
                    max_distance=bias.max_distance, bidirectional=bias.bidirectional)
    bias = None
  # sm_scale=1.0: T5 attention is unscaled (its query initializer absorbs 1/sqrt(head_dim)).
  return flash_attention.flash_attention(
      q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids=q_segment_ids_BxQ,
      kv_segment_ids=kv_segment_ids_BxK, causal=causal, bias=bias, sm_scale=1.0, **relative)


def dot_product_attention(q_BxQxHxD: jax.Array, k_BxKxHxD: jax.Array, v_BxKxHxD: jax.Array, *,
                          q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array,
                          causal: bool, bias_BxHxQxK: jax.Array | RelativeBias | None = None,
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                          impl: str = "xla") -> jax.Array:
  """Unscaled (T5-style) attention; a query sees keys of its own non-zero segment only.

  `bias_BxHxQxK` is a dense bias or a `RelativeBias` standing for one (expanded per block by
  pallas, materialized by the others). Query rows that see no key (padding) are don't-care
  outputs: xla averages all values uniformly, pallas gives zeros. Only xla has attention dropout.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"Unknown attention_impl={impl!r}; expected one of {ATTENTION_IMPLS}.")
  if impl != "xla" and dropout_rate > 0.0 and dropout_rng is not None:
    raise ValueError(f"attention_impl={impl!r} has no attention dropout; use 'xla' or "
                     f"dropout_rate=0.")
  segments = (q_segment_ids_BxQ, kv_segment_ids_BxK)
  if impl == "pallas":
    return _pallas_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, *segments, causal, bias_BxHxQxK)
  if isinstance(bias_BxHxQxK, RelativeBias):
    bias_BxHxQxK = bias_BxHxQxK.dense(q_BxQxHxD.shape[1], k_BxKxHxD.shape[1])
  if impl == "cudnn":
    return _cudnn_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, *segments, causal, bias_BxHxQxK)
  mask_Bx1xQxK = make_attention_mask(*segments, causal=causal)
  return _xla_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask_Bx1xQxK, bias_BxHxQxK,
                        dropout_rate, dropout_rng)


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

  def self_attention_bias(self, positions_BxL: jax.Array,
                          attention_impl: str) -> jax.Array | RelativeBias:
    """Bias for self-attention over `positions_BxL`: the table itself for pallas, else dense.

    The kernel buckets token index differences instead of position differences. They agree for
    packed rows: positions restart per segment and segments are contiguous, so within a segment
    k_pos - q_pos == k_idx - q_idx, and pairs across segments are masked anyway.
    """
    if attention_impl == "pallas":
      return RelativeBias(jnp.transpose(self.embedding[...]), self.bidirectional,
                          self.num_buckets, self.max_distance)
    return self(positions_BxL, positions_BxL)


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
             bias_BxHxQxK: jax.Array | RelativeBias | None = None,
             dropout_rng: jax.Array | None = None, impl: str | None = None) -> jax.Array:
    """Attends queries projected from `inputs_q_BxQxD` to given keys/values; returns [B, Q, D].

    `impl` overrides the configured attention implementation for this call.
    """
    q_BxQxHxD = self.query(inputs_q_BxQxD)
    out_BxQxHxD = dot_product_attention(
        q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids_BxQ=q_segment_ids_BxQ,
        kv_segment_ids_BxK=kv_segment_ids_BxK, causal=causal, bias_BxHxQxK=bias_BxHxQxK,
        dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
        impl=impl or self.attention_impl)
    return self.out(out_BxQxHxD)

  def __call__(self, inputs_q_BxQxD: jax.Array, inputs_kv_BxKxD: jax.Array, *,
               q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array, causal: bool,
               bias_BxHxQxK: jax.Array | RelativeBias | None = None,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Full attention of `inputs_q_BxQxD` over `inputs_kv_BxKxD`; returns [B, Q, D]."""
    k_BxKxHxD, v_BxKxHxD = self.project_kv(inputs_kv_BxKxD)
    return self.attend(inputs_q_BxQxD, k_BxKxHxD, v_BxKxHxD, q_segment_ids_BxQ=q_segment_ids_BxQ,
                       kv_segment_ids_BxK=kv_segment_ids_BxK, causal=causal,
                       bias_BxHxQxK=bias_BxHxQxK, dropout_rng=dropout_rng)

"""Flash attention in Pallas, forward and backward, for packed instruction-tuning batches.

One kernel family covers what packed SFT needs: segment ids (packed examples never attend to each
other), causal masking, GQA/MQA, a dense additive bias, and T5's relative-position bias computed
per block from its [num_buckets, heads] table, so no [heads, q_len, kv_len] tensor is ever built.
Blocks that are entirely masked are skipped: causally dead ones through loop bounds, ones that
segment ids hide entirely (a block pairing two different packed examples, or padding) through a
branch. Softmax is online with float32 accumulation; the forward saves the per-row logsumexp and
the backward recomputes probabilities from it.

Layout: callers pass [B, L, H, D]; the wrapper pads lengths to whole blocks and the head dim to a
power of two of at least 16 (zeros change no dot product, but a head dim of 80 costs as much as
128) and moves heads before length, so each grid program reads contiguous [block, head_dim] tiles. Kernels loop over kv (or q) blocks with `fori_loop`
inside one program, the structure Triton lowers directly.

Backends: interpret mode on CPU (automatic; `interpret=True` forces it anywhere) is what the tests
exercise. The kernel bodies use only ops that the Triton (GPU) and Mosaic (TPU) lowerings accept
in principle, but neither compiled path has been run; on TPU the full-length k/v blocks also have
to fit in VMEM.

Shape letters: B batch, Q query length, K key length, H query heads, G key/value heads (one per
group of H // G query heads), D head dim, N relative-position buckets.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from sft_jax.kernels import relative_position

# Finite: max/exp arithmetic over a fully masked block stays NaN-free (masked probabilities are
# then zeroed explicitly, so such rows give zeros rather than a uniform average).
_MASK_VALUE = -1e30


@dataclasses.dataclass(frozen=True)
class _Static:
  """What the kernels specialize on; hashable, as a non-differentiable custom_vjp argument."""
  sm_scale: float
  causal: bool
  block_q: int
  block_k: int
  kv_len: int  # keys at or past this index are wrapper padding
  group: int  # query heads per kv head
  segments: bool
  bias: bool
  bias_batch: bool  # the dense bias has a batch axis (else it broadcasts over batch)
  bias_heads: bool  # ... a head axis (else it broadcasts over heads)
  table: bool
  num_buckets: int
  max_distance: int
  bidirectional: bool
  interpret: bool


# -- shared block math ------------------------------------------------------------------------


def _block_mask(st: _Static, q_start, k_start, q_seg_Q, kv_seg_K):
  """Boolean [block_q, block_k] of visible pairs, or None when every pair is visible."""
  shape = (st.block_q, st.block_k)
  q_idx_QxK = q_start + lax.broadcasted_iota(jnp.int32, shape, 0)
  k_idx_QxK = k_start + lax.broadcasted_iota(jnp.int32, shape, 1)
  mask_QxK = None
  if st.segments:
    # Padding keys (segment 0) hide themselves; the wrapper pads with segment 0 too.
    mask_QxK = (q_seg_Q[:, None] == kv_seg_K[None, :]) & (kv_seg_K[None, :] != 0)
  elif st.kv_len % st.block_k:
    mask_QxK = k_idx_QxK < st.kv_len
  if st.causal:
    causal_QxK = q_idx_QxK >= k_idx_QxK
    mask_QxK = causal_QxK if mask_QxK is None else mask_QxK & causal_QxK
  return mask_QxK


def _table_entry(table_N, n):
  # A masked sum rather than a dynamic scalar index: plain vector ops on every backend.
  iota_N = lax.broadcasted_iota(jnp.int32, table_N.shape, 0)
  return jnp.sum(jnp.where(iota_N == n, table_N, 0.0))


def _relative_bias(st: _Static, table_N, q_start, k_start):
  """T5 bias [block_q, block_k] of one block from a head's table row, and the block's buckets."""
  shape = (st.block_q, st.block_k)
  relative_QxK = ((k_start + lax.broadcasted_iota(jnp.int32, shape, 1))
                  - (q_start + lax.broadcasted_iota(jnp.int32, shape, 0)))
  buckets_QxK = relative_position.relative_position_bucket(
      relative_QxK, st.bidirectional, st.num_buckets, st.max_distance)

  def pick(n, bias_QxK):
    return jnp.where(buckets_QxK == n, _table_entry(table_N, n), bias_QxK)

  # Only the buckets present in the block: one pass for blocks beyond max_distance.
  bias_QxK = lax.fori_loop(jnp.min(buckets_QxK), jnp.max(buckets_QxK) + 1, pick,
                           jnp.zeros(shape, jnp.float32))
  return bias_QxK, buckets_QxK


def _bucket_sums(dtable_N, ds_QxK, buckets_QxK):
  """Adds to `dtable_N` the sum of `ds_QxK` over each bucket present in the block."""
  iota_N = lax.broadcasted_iota(jnp.int32, dtable_N.shape, 0)

  def add(n, acc_N):
    total = jnp.sum(jnp.where(buckets_QxK == n, ds_QxK, 0.0))
    return acc_N + jnp.where(iota_N == n, total, 0.0)

  return lax.fori_loop(jnp.min(buckets_QxK), jnp.max(buckets_QxK) + 1, add, dtable_N)


def _scores(st: _Static, q_QxD, k_KxD, q_start, k_start, mask_QxK, bias_QxK, table_N):
  """Masked float32 logits [block_q, block_k] and the block's buckets (None without a table)."""
  s_QxK = lax.dot_general(q_QxD, k_KxD, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32) * st.sm_scale
  if bias_QxK is not None:
    s_QxK = s_QxK + bias_QxK.astype(jnp.float32)
  buckets_QxK = None
  if table_N is not None:
    relative_QxK, buckets_QxK = _relative_bias(st, table_N, q_start, k_start)
    s_QxK = s_QxK + relative_QxK
  if mask_QxK is not None:
    s_QxK = jnp.where(mask_QxK, s_QxK, _MASK_VALUE)
  return s_QxK, buckets_QxK


def _visit_unless_hidden(st: _Static, mask_QxK, visit, carry):
  """visit(carry), skipped when segment ids hide the whole block (say, two packed examples)."""
  if not st.segments:
    return visit(carry)
  return lax.cond(jnp.any(mask_QxK), visit, lambda carry: carry, carry)


def _probs(s_QxK, mask_QxK, lse_Q):
  p_QxK = jnp.exp(s_QxK - lse_Q[:, None])
  return p_QxK if mask_QxK is None else jnp.where(mask_QxK, p_QxK, 0.0)


def _matmul(a, b, contract_a: int, contract_b: int):
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                         preferred_element_type=jnp.float32)


def _kv_blocks_end(st: _Static, q_block, num_k_blocks: int):
  """One past the last kv block a q block needs: causally later blocks are never visited."""
  if not st.causal:
    return num_k_blocks
  last_row = (q_block + 1) * st.block_q
  return jnp.minimum(num_k_blocks, lax.div(last_row + st.block_k - 1, st.block_k))


def _split_refs(st: _Static, refs):
  """(q, k, v, q_seg, kv_seg, bias, table, rest): absent optional inputs come back as None."""
  refs = list(refs)
  q_ref, k_ref, v_ref = refs[:3]
  del refs[:3]
  q_seg_ref = kv_seg_ref = bias_ref = table_ref = None
  if st.segments:
    q_seg_ref, kv_seg_ref = refs[:2]
    del refs[:2]
  if st.bias:
    bias_ref = refs.pop(0)
  if st.table:
    table_ref = refs.pop(0)
  return q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, bias_ref, table_ref, refs


# -- kernels ----------------------------------------------------------------------------------


def _forward_kernel(*refs, st: _Static):
  """One (batch, head, q block): online softmax over kv blocks; writes output and logsumexp."""
  q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, bias_ref, table_ref, (o_ref, lse_ref) = (
      _split_refs(st, refs))
  q_block = pl.program_id(2)
  q_start = q_block * st.block_q
  q_QxD = q_ref[...]
  q_seg_Q = None if q_seg_ref is None else q_seg_ref[...]
  table_N = None if table_ref is None else table_ref[...].astype(jnp.float32)

  def body(k_block, carry):
    k_start = k_block * st.block_k
    ks = pl.ds(k_start, st.block_k)
    mask_QxK = _block_mask(st, q_start, k_start, q_seg_Q,
                           None if kv_seg_ref is None else kv_seg_ref[ks])

    def visit(carry):
      acc_QxD, m_Q, l_Q = carry
      s_QxK, _ = _scores(st, q_QxD, k_ref[ks, :], q_start, k_start, mask_QxK,
                         None if bias_ref is None else bias_ref[:, ks], table_N)
      m_new_Q = jnp.maximum(m_Q, jnp.max(s_QxK, axis=1))
      p_QxK = _probs(s_QxK, mask_QxK, m_new_Q)
      correction_Q = jnp.exp(m_Q - m_new_Q)
      l_Q = correction_Q * l_Q + jnp.sum(p_QxK, axis=1)
      pv_QxD = _matmul(p_QxK.astype(v_ref.dtype), v_ref[ks, :], 1, 0)
      return correction_Q[:, None] * acc_QxD + pv_QxD, m_new_Q, l_Q

    return _visit_unless_hidden(st, mask_QxK, visit, carry)

  init = (jnp.zeros(q_QxD.shape, jnp.float32), jnp.full((st.block_q,), _MASK_VALUE, jnp.float32),
          jnp.zeros((st.block_q,), jnp.float32))
  num_k_blocks = k_ref.shape[0] // st.block_k
  acc_QxD, m_Q, l_Q = lax.fori_loop(0, _kv_blocks_end(st, q_block, num_k_blocks), body, init)
  seen_Q = l_Q > 0.0  # False only for rows that see no key at all
  # Such rows have acc = 0: dividing by 1 instead of 0 leaves them zero.
  l_Q = jnp.where(seen_Q, l_Q, 1.0)
  o_ref[...] = (acc_QxD / l_Q[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen_Q, m_Q + jnp.log(l_Q), 0.0)


def _dq_kernel(*refs, st: _Static):
  """One (batch, head, q block): dq, and this block's share of d(table) per bucket."""
  q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, bias_ref, table_ref, rest = _split_refs(st, refs)
  do_ref, lse_ref, delta_ref, dq_ref = rest[:4]
  dtable_ref = rest[4] if st.table else None
  q_block = pl.program_id(2)
  q_start = q_block * st.block_q
  q_QxD, do_QxD = q_ref[...], do_ref[...]
  lse_Q, delta_Q = lse_ref[...], delta_ref[...]
  q_seg_Q = None if q_seg_ref is None else q_seg_ref[...]
  table_N = None if table_ref is None else table_ref[...].astype(jnp.float32)

  def body(k_block, carry):
    k_start = k_block * st.block_k
    ks = pl.ds(k_start, st.block_k)
    mask_QxK = _block_mask(st, q_start, k_start, q_seg_Q,
                           None if kv_seg_ref is None else kv_seg_ref[ks])

    def visit(carry):
      dq_QxD, dtable_N = carry
      k_KxD = k_ref[ks, :]
      s_QxK, buckets_QxK = _scores(st, q_QxD, k_KxD, q_start, k_start, mask_QxK,
                                   None if bias_ref is None else bias_ref[:, ks], table_N)
      p_QxK = _probs(s_QxK, mask_QxK, lse_Q)
      dp_QxK = _matmul(do_QxD, v_ref[ks, :], 1, 1)
      ds_QxK = p_QxK * (dp_QxK - delta_Q[:, None])
      dq_QxD = dq_QxD + _matmul(ds_QxK.astype(k_KxD.dtype), k_KxD, 1, 0)
      if table_N is not None:
        dtable_N = _bucket_sums(dtable_N, ds_QxK, buckets_QxK)
      return dq_QxD, dtable_N

    return _visit_unless_hidden(st, mask_QxK, visit, carry)

  init = (jnp.zeros(q_QxD.shape, jnp.float32),
          None if table_N is None else jnp.zeros(table_N.shape, jnp.float32))
  num_k_blocks = k_ref.shape[0] // st.block_k
  dq_QxD, dtable_N = lax.fori_loop(0, _kv_blocks_end(st, q_block, num_k_blocks), body, init)
  dq_ref[...] = (dq_QxD * st.sm_scale).astype(dq_ref.dtype)
  if dtable_ref is not None:
    dtable_ref[...] = dtable_N


def _dkv_kernel(*refs, st: _Static):
  """One (batch, kv head, kv block): dk and dv summed over the group's query heads and q blocks."""
  q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, bias_ref, table_ref, rest = _split_refs(st, refs)
  do_ref, lse_ref, delta_ref, dk_ref, dv_ref = rest
  k_start = pl.program_id(2) * st.block_k
  k_KxD, v_KxD = k_ref[...], v_ref[...]
  kv_seg_K = None if kv_seg_ref is None else kv_seg_ref[...]
  num_q_blocks = q_ref.shape[1] // st.block_q
  # Causality: q blocks that end before this kv block starts see none of it.
  first_q_block = lax.div(k_start, st.block_q) if st.causal else 0

  def head(g, carry):
    table_N = None if table_ref is None else table_ref[g, :].astype(jnp.float32)

    def body(q_block, carry):
      q_start = q_block * st.block_q
      qs = pl.ds(q_start, st.block_q)
      mask_QxK = _block_mask(st, q_start, k_start,
                             None if q_seg_ref is None else q_seg_ref[qs], kv_seg_K)

      def visit(carry):
        dk_KxD, dv_KxD = carry
        q_QxD, do_QxD = q_ref[g, qs, :], do_ref[g, qs, :]
        bias_QxK = None if bias_ref is None else bias_ref[g if st.bias_heads else 0, qs, :]
        s_QxK, _ = _scores(st, q_QxD, k_KxD, q_start, k_start, mask_QxK, bias_QxK, table_N)
        p_QxK = _probs(s_QxK, mask_QxK, lse_ref[g, qs])
        dv_KxD = dv_KxD + _matmul(p_QxK.astype(do_QxD.dtype), do_QxD, 0, 0)
        dp_QxK = _matmul(do_QxD, v_KxD, 1, 1)
        ds_QxK = p_QxK * (dp_QxK - delta_ref[g, qs][:, None])
        dk_KxD = dk_KxD + _matmul(ds_QxK.astype(q_QxD.dtype), q_QxD, 0, 0)
        return dk_KxD, dv_KxD

      return _visit_unless_hidden(st, mask_QxK, visit, carry)

    return lax.fori_loop(first_q_block, num_q_blocks, body, carry)

  zeros_KxD = jnp.zeros(k_KxD.shape, jnp.float32)
  dk_KxD, dv_KxD = lax.fori_loop(0, st.group, head, (zeros_KxD, zeros_KxD))
  dk_ref[...] = (dk_KxD * st.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_KxD.astype(dv_ref.dtype)


# -- pallas_call plumbing -----------------------------------------------------------------------


def _compiler_params(st: _Static, head_dim: int):
  if st.interpret:
    return None
  backend = jax.default_backend()
  if backend == "gpu":
    return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
  if backend == "tpu":
    # Grid programs are independent (no accumulation across them): any order, any core.
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * 3)
  return None


def _q_major_specs(st: _Static, q, k, q_seg, bias, table):
  """BlockSpecs of (q, k, v, segments, bias, table) for grid (batch, head, q block)."""
  kv_len, head_dim = k.shape[2], k.shape[3]
  group = st.group
  specs = [pl.BlockSpec((None, None, st.block_q, head_dim), lambda b, h, i: (b, h, i, 0))]
  specs += [pl.BlockSpec((None, None, kv_len, head_dim), lambda b, h, i: (b, h // group, 0, 0))] * 2
  if q_seg is not None:
    specs += [pl.BlockSpec((None, st.block_q), lambda b, h, i: (b, i)),
              pl.BlockSpec((None, kv_len), lambda b, h, i: (b, 0))]
  if bias is not None:
    bb, bh = st.bias_batch, st.bias_heads
    specs.append(pl.BlockSpec((None, None, st.block_q, kv_len),
                              lambda b, h, i: (b if bb else 0, h if bh else 0, i, 0)))
  if table is not None:
    specs.append(pl.BlockSpec((None, table.shape[1]), lambda b, h, i: (h, 0)))
  return specs


def _optional(*arrays):
  return [a for a in arrays if a is not None]


def _forward(st: _Static, q, k, v, q_seg, kv_seg, bias, table):
  """Output [B, H, Q, D] and float32 logsumexp [B, H, Q] (0 for rows that see no key)."""
  batch, heads, q_len, head_dim = q.shape
  grid = (batch, heads, q_len // st.block_q)
  row_spec = pl.BlockSpec((None, None, st.block_q), lambda b, h, i: (b, h, i))
  return pl.pallas_call(
      functools.partial(_forward_kernel, st=st),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32)),
      grid=grid,
      in_specs=_q_major_specs(st, q, k, q_seg, bias, table),
      out_specs=(pl.BlockSpec((None, None, st.block_q, head_dim), lambda b, h, i: (b, h, i, 0)),
                 row_spec),
      compiler_params=_compiler_params(st, head_dim),
      interpret=st.interpret,
      name="sft_flash_attention_fwd",
  )(q, k, v, *_optional(q_seg, kv_seg, bias, table))


def _backward_dq(st: _Static, q, k, v, q_seg, kv_seg, bias, table, d_out, lse, delta):
  """dq [B, H, Q, D] and, with a table, d(table) [H, N] in float32."""
  batch, heads, q_len, head_dim = q.shape
  num_q_blocks = q_len // st.block_q
  q_spec = pl.BlockSpec((None, None, st.block_q, head_dim), lambda b, h, i: (b, h, i, 0))
  row_spec = pl.BlockSpec((None, None, st.block_q), lambda b, h, i: (b, h, i))
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  out_specs = [q_spec]
  if table is not None:
    # One partial per (batch, head, q block), summed below: no two programs write one entry.
    num_buckets = table.shape[1]
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, num_q_blocks, num_buckets), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, None, num_buckets), lambda b, h, i: (b, h, i, 0)))
  outs = pl.pallas_call(
      functools.partial(_dq_kernel, st=st),
      out_shape=out_shape,
      grid=(batch, heads, num_q_blocks),
      in_specs=_q_major_specs(st, q, k, q_seg, bias, table) + [q_spec, row_spec, row_spec],
      out_specs=out_specs,
      compiler_params=_compiler_params(st, head_dim),
      interpret=st.interpret,
      name="sft_flash_attention_dq",
  )(q, k, v, *_optional(q_seg, kv_seg, bias, table), d_out, lse, delta)
  dtable_HxN = None if table is None else jnp.sum(outs[1], axis=(0, 2))
  return outs[0], dtable_HxN


def _backward_dkv(st: _Static, q, k, v, q_seg, kv_seg, bias, table, d_out, lse, delta):
  """dk, dv [B, G, K, D], each summed over the query heads of its group."""
  q_len, head_dim = q.shape[2], q.shape[3]
  batch, kv_heads, kv_len = k.shape[:3]
  group = st.group
  q_spec = pl.BlockSpec((None, group, q_len, head_dim), lambda b, g, j: (b, g, 0, 0))
  kv_spec = pl.BlockSpec((None, None, st.block_k, head_dim), lambda b, g, j: (b, g, j, 0))
  rows_spec = pl.BlockSpec((None, group, q_len), lambda b, g, j: (b, g, 0))
  in_specs = [q_spec, kv_spec, kv_spec]
  if q_seg is not None:
    in_specs += [pl.BlockSpec((None, q_len), lambda b, g, j: (b, 0)),
                 pl.BlockSpec((None, st.block_k), lambda b, g, j: (b, j))]
  if bias is not None:
    bb, bh = st.bias_batch, st.bias_heads
    in_specs.append(pl.BlockSpec((None, group if bh else 1, q_len, st.block_k),
                                 lambda b, g, j: (b if bb else 0, g if bh else 0, 0, j)))
  if table is not None:
    in_specs.append(pl.BlockSpec((group, table.shape[1]), lambda b, g, j: (g, 0)))
  in_specs += [q_spec, rows_spec, rows_spec]
  return pl.pallas_call(
      functools.partial(_dkv_kernel, st=st),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(batch, kv_heads, kv_len // st.block_k),
      in_specs=in_specs,
      out_specs=(kv_spec, kv_spec),
      compiler_params=_compiler_params(st, head_dim),
      interpret=st.interpret,
      name="sft_flash_attention_dkv",
  )(q, k, v, *_optional(q_seg, kv_seg, bias, table), d_out, lse, delta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st: _Static, q, k, v, q_seg, kv_seg, bias, table):
  return _forward(st, q, k, v, q_seg, kv_seg, bias, table)[0]


def _flash_fwd(st: _Static, q, k, v, q_seg, kv_seg, bias, table):
  out, lse = _forward(st, q, k, v, q_seg, kv_seg, bias, table)
  return out, (q, k, v, q_seg, kv_seg, bias, table, out, lse)


def _flash_bwd(st: _Static, residuals, d_out):
  q, k, v, q_seg, kv_seg, bias, table, out, lse = residuals
  # delta_i = sum_j p_ij dp_ij = <dO_i, O_i>: the softmax backward's row term, computed once.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  args = (q, k, v, q_seg, kv_seg, bias, table, d_out, lse, delta)
  dq, dtable = _backward_dq(st, *args)
  dk, dv = _backward_dkv(st, *args)
  if dtable is not None:
    dtable = dtable.astype(table.dtype)
  # Segment ids are integers and the dense bias is a constant (see `flash_attention`).
  return dq, dk, dv, None, None, None, dtable


_flash.defvjp(_flash_fwd, _flash_bwd)


# -- public API ---------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _block_size(requested: int, length: int) -> int:
  # Powers of two of at least 16 (Triton's tile constraints); no bigger than the padded length.
  if requested < 16 or requested & (requested - 1):
    raise ValueError(f"Block sizes must be powers of two >= 16, got {requested}.")
  return min(requested, max(16, pl.next_power_of_2(length)))


def _to_kernel_layout(x_BxLxHxD: jax.Array, length: int, head_dim: int) -> jax.Array:
  """[B, L, H, D] -> [B, H, length, head_dim], zero-padded."""
  _, l, _, d = x_BxLxHxD.shape
  x_BxLxHxD = jnp.pad(x_BxLxHxD, ((0, 0), (0, length - l), (0, 0), (0, head_dim - d)))
  return jnp.transpose(x_BxLxHxD, (0, 2, 1, 3))


def _check_shapes(q, k, v, q_segment_ids, kv_segment_ids, bias, table, num_buckets):
  if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError(f"Expected q [B, Q, H, D] and k, v [B, K, G, D]; got {q.shape}, {k.shape}, "
                     f"{v.shape}.")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}.")
  (batch, q_len, heads, head_dim), (_, kv_len, kv_heads, _) = q.shape, k.shape
  if k.shape[0] != batch or k.shape[3] != head_dim:
    raise ValueError(f"q {q.shape} and k {k.shape} differ in batch or head dim.")
  if heads % kv_heads:
    raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads.")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  if q_segment_ids is not None and (q_segment_ids.shape != (batch, q_len)
                                    or kv_segment_ids.shape != (batch, kv_len)):
    raise ValueError(f"Segment ids {q_segment_ids.shape}, {kv_segment_ids.shape} do not match "
                     f"[B, Q] = {(batch, q_len)} and [B, K] = {(batch, kv_len)}.")
  if bias is not None and (bias.ndim != 4 or bias.shape[0] not in (1, batch)
                           or bias.shape[1] not in (1, heads) or bias.shape[2:] != (q_len, kv_len)):
    raise ValueError(f"bias {bias.shape} is not [B or 1, H or 1, Q, K] = "
                     f"[{batch} or 1, {heads} or 1, {q_len}, {kv_len}].")
  if table is not None and table.shape != (num_buckets, heads):
    raise ValueError(f"relative_bias_table {table.shape} is not [num_buckets, H] = "
                     f"{(num_buckets, heads)}.")


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    q_segment_ids: jax.Array | None = None,
                    kv_segment_ids: jax.Array | None = None, causal: bool = False,
                    bias: jax.Array | None = None, relative_bias_table: jax.Array | None = None,
                    num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True,
                    sm_scale: float | None = None, block_q: int = 128, block_k: int = 128,
                    interpret: bool | None = None) -> jax.Array:
  """Fused softmax(sm_scale * q k^T + bias + T5 bias) v for q [B, Q, H, D], k/v [B, K, G, D].

  Semantics are those of `reference.attention_reference`: a query sees keys of its own non-zero
  segment (0 is padding) and, if `causal`, keys at an index <= its own; rows that see no key give
  zeros; G < H is GQA/MQA. `sm_scale=None` means 1/sqrt(D) (pass 1.0 for T5, which is unscaled).
  `relative_bias_table` [N, H] adds table[bucket(j - i), h] per (query i, key j), computed per
  block in the kernel, and is differentiable. A dense `bias` [B or 1, H or 1, Q, K] is a
  constant: no gradient flows to it (use the table for a trainable T5 bias).
  `interpret=None` runs the Pallas interpreter when the default backend is CPU.
  """
  _check_shapes(q, k, v, q_segment_ids, kv_segment_ids, bias, relative_bias_table, num_buckets)
  batch, q_len, heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  block_q = _block_size(block_q, q_len)
  block_k = _block_size(block_k, kv_len)
  q_pad, kv_pad = _round_up(q_len, block_q), _round_up(kv_len, block_k)
  head_dim_pad = max(16, pl.next_power_of_2(head_dim))
  st = _Static(
      sm_scale=1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale),
      causal=causal, block_q=block_q, block_k=block_k, kv_len=kv_len, group=heads // kv_heads,
      segments=q_segment_ids is not None, bias=bias is not None,
      bias_batch=bias is not None and bias.shape[0] == batch,
      bias_heads=bias is not None and bias.shape[1] == heads,
      table=relative_bias_table is not None, num_buckets=num_buckets, max_distance=max_distance,
      bidirectional=bidirectional, interpret=bool(interpret))

  q_seg = kv_seg = table = None
  if q_segment_ids is not None:
    # Padding rows and keys get segment 0: they see nothing and nothing sees them.
    q_seg = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, q_pad - q_len)))
    kv_seg = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, kv_pad - kv_len)))
  if bias is not None:
    bias = jnp.pad(lax.stop_gradient(bias), ((0, 0), (0, 0), (0, q_pad - q_len),
                                              (0, kv_pad - kv_len)))
  if relative_bias_table is not None:
    # [H, N] padded to a power of two of buckets; the extra buckets are never selected.
    table = jnp.pad(relative_bias_table.T,
                    ((0, 0), (0, pl.next_power_of_2(num_buckets) - num_buckets)))
  out_BxHxQxD = _flash(st, _to_kernel_layout(q, q_pad, head_dim_pad),
                       _to_kernel_layout(k, kv_pad, head_dim_pad),
                       _to_kernel_layout(v, kv_pad, head_dim_pad), q_seg, kv_seg, bias, table)
  return jnp.transpose(out_BxHxQxD[:, :, :q_len, :head_dim], (0, 2, 1, 3))

"""Pallas flash attention, run in interpret mode on CPU, against the plain-XLA reference.

Tolerances. fp32: rtol 1e-5 per element plus atol 5e-6 x the array's scale (its largest magnitude,
at least 1). The kernel adds blocks in a different order than the reference (online softmax,
blocked sums over keys and queries), so entries that are sums of cancelling terms (gradients near
zero) carry an error relative to the array's scale rather than their own. Measured worst cases
over the grid below: 1e-6 of the scale for out, dq, dk, dv; 3.3e-6 for d(table), whose entries
each sum ds over thousands of (query, key) pairs.

bf16: rtol 2e-2 plus atol 2e-2 x scale. The kernel feeds bf16 probabilities and bf16 ds into its
matmuls (as flash kernels do on accelerators) and returns bf16, while the reference computes in
float32 from the same bf16 inputs; bf16 keeps 8 significant bits (relative spacing 2^-8 = 0.4%)
and these roundings add up over a few hundred keys. Measured worst case: 6.5e-3 of the scale.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.kernels import reference
from sft_jax.kernels import relative_position
from sft_jax.kernels.flash_attention import flash_attention

HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
HEAD_DIM = 16
BLOCK = 32  # several blocks at lengths 128 and 300, a padded partial block at 17 and 300
# Not a power of two (the wrapper pads the table) and small enough that lengths of 17-300 reach
# the exact, logarithmic and saturated buckets.
NUM_BUCKETS, MAX_DISTANCE = 12, 40
# Interpret-mode kernels are large while loops whose XLA:CPU compile dominates these tests;
# backend optimization level 0 compiles them about 3x faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def _packings(rng: np.random.Generator, batch: int, q_len: int, kv_len: int):
  """Random contiguous segments 1..n then padding, the same n for queries and keys of a row;
  the last row is all padding."""
  q_ids, kv_ids = np.zeros((batch, q_len), np.int32), np.zeros((batch, kv_len), np.int32)
  for row in range(batch - 1):
    q_real = int(rng.integers(max(1, q_len * 2 // 3), q_len + 1))
    kv_real = int(rng.integers(max(1, kv_len * 2 // 3), kv_len + 1))
    n = int(rng.integers(1, min(3, q_real, kv_real) + 1))
    for ids, real in ((q_ids, q_real), (kv_ids, kv_real)):
      cuts = np.sort(rng.choice(np.arange(1, real), n - 1, replace=False)) if n > 1 else []
      for segment, (start, end) in enumerate(zip([0, *cuts], [*cuts, real]), start=1):
        ids[row, start:end] = segment
  return jnp.asarray(q_ids), jnp.asarray(kv_ids)


def _assert_close(got, want, dtype, name):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.all(np.isfinite(got)), f"{name}: non-finite values"
  # At least 1: some gradients are exactly zero by cancellation (dq of a row with one visible
  # key), and the kernel computes them as differences of O(1) terms.
  scale = max(float(np.abs(want).max()), 1.0)
  rtol, atol = (1e-5, 5e-6) if dtype == jnp.float32 else (2e-2, 2e-2)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=name)


def _check(q_len, kv_len, heads, *, causal, segments, table, bidirectional=None,
           dtype=jnp.float32, bias=None, seed=0, block=BLOCK):
  """Output and every gradient of the kernel vs the reference, for one configuration."""
  rng = np.random.default_rng(seed)
  batch, (num_heads, num_kv_heads) = 3, HEADS[heads]
  bidirectional = not causal if bidirectional is None else bidirectional

  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)

  q = normal(batch, q_len, num_heads, HEAD_DIM)
  k, v = normal(batch, kv_len, num_kv_heads, HEAD_DIM), normal(batch, kv_len, num_kv_heads,
                                                                HEAD_DIM)
  d_out = normal(batch, q_len, num_heads, HEAD_DIM)
  t = jnp.asarray(rng.normal(size=(NUM_BUCKETS, num_heads)), jnp.float32) if table else None
  q_seg, kv_seg = _packings(rng, batch, q_len, kv_len) if segments else (None, None)
  kwargs = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=causal, bias=bias,
                num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE, bidirectional=bidirectional)

  def run(attention, **extra):
    def fn(q, k, v, t):
      out, vjp = jax.vjp(
          lambda q, k, v, t: attention(q, k, v, relative_bias_table=t, **kwargs, **extra),
          q, k, v, t)
      return out, vjp(d_out)
    return _jit(fn)(q, k, v, t)

  got_out, got_grads = run(flash_attention, block_q=block, block_k=block)
  want_out, want_grads = run(reference.attention_reference)
  assert got_out.dtype == dtype
  _assert_close(got_out, want_out, dtype, "out")
  for name, got, want in zip(("dq", "dk", "dv", "dtable"), got_grads, want_grads):
    if want is not None:
      assert got.dtype == want.dtype, name
      _assert_close(got, want, dtype, name)
  if segments:  # the fully padded row: exact zeros out, nothing back
    assert not np.any(np.asarray(got_out[-1], np.float32))
    assert not np.any(np.asarray(got_grads[0][-1], np.float32))


LENGTHS = (1, 17, 128, 300)
# Every combination of the cheap axes; lengths rotate so that each (causal, segments) pair meets
# every length, with and without the bias table.
GRID = [
    pytest.param(LENGTHS[i % 4], causal, segments, heads, table,
                 id=f"L{LENGTHS[i % 4]}-{'causal' if causal else 'full'}-"
                    f"{'seg' if segments else 'noseg'}-{heads}-{'table' if table else 'notable'}")
    for i, (causal, segments, heads, table) in enumerate(
        itertools.product((False, True), (False, True), HEADS, (False, True)))]


@pytest.mark.parametrize("length,causal,segments,heads,table", GRID)
def test_forward_and_gradients_match_reference(length, causal, segments, heads, table):
  _check(length, length, heads, causal=causal, segments=segments, table=table)


@pytest.mark.parametrize("causal,bidirectional", [(True, True), (False, False)])
def test_bucket_direction_independent_of_causality(causal, bidirectional):
  _check(128, 128, "gqa", causal=causal, segments=True, table=True, bidirectional=bidirectional)


@pytest.mark.parametrize("q_len,kv_len", [(17, 300), (300, 45), (1, 128)])
def test_cross_attention_lengths(q_len, kv_len):
  # T5 cross-attention: different query and key lengths, each packed with the same segments.
  _check(q_len, kv_len, "mha", causal=False, segments=True, table=False)


@pytest.mark.parametrize("causal,heads", [(False, "mha"), (True, "gqa")])
def test_bfloat16(causal, heads):
  _check(300, 300, heads, causal=causal, segments=True, table=True, dtype=jnp.bfloat16)


def test_larger_blocks():
  _check(300, 300, "mqa", causal=True, segments=True, table=True, block=64)


def test_dense_bias_is_added_and_constant():
  rng = np.random.default_rng(3)
  batch, length, (heads, kv_heads) = 2, 40, HEADS["gqa"]
  q = jnp.asarray(rng.normal(size=(batch, length, heads, HEAD_DIM)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, HEAD_DIM)), jnp.float32)
          for _ in range(2))
  for bias_shape in [(batch, heads, length, length), (1, 1, length, length)]:
    bias = jnp.asarray(rng.normal(size=bias_shape), jnp.float32)

    def loss(attention, q, k, v, bias, **extra):
      return jnp.sum(jnp.sin(attention(q, k, v, bias=bias, causal=True, **extra)))

    got = _jit(jax.value_and_grad(
        lambda *a: loss(flash_attention, *a, block_q=BLOCK, block_k=BLOCK), (0, 1, 2, 3)))(
            q, k, v, bias)
    want = _jit(jax.value_and_grad(
        lambda q, k, v, b: loss(reference.attention_reference, q, k, v,
                                jax.lax.stop_gradient(b)), (0, 1, 2, 3)))(q, k, v, bias)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for name, got_grad, want_grad in zip(("dq", "dk", "dv"), got[1], want[1]):
      _assert_close(got_grad, want_grad, jnp.float32, name)
    assert not np.any(np.asarray(got[1][3])), "a dense bias is documented as a constant"
    without = _jit(lambda q: loss(reference.attention_reference, q, k, v, None))(q)
    assert abs(float(got[0]) - float(without)) > 1e-2, "the bias changed nothing"


def _poisoned_run(causal, segment_ids):
  """(got, want): kernel on NaN-poisoned inputs vs the reference on clean ones.

  NaN sits in the values and output gradients of positions that masking hides from the first
  half: any visit to a fully masked block turns into NaN (0 * NaN) in a matmul, so finite,
  correct first-half outputs (and second-half dk, dv) prove such blocks were skipped.
  """
  rng = np.random.default_rng(4)
  q, k, v, d_out = (jnp.asarray(rng.normal(size=(1, 128, 2, HEAD_DIM)), jnp.float32)
                    for _ in range(4))
  kw = dict(causal=causal, q_segment_ids=segment_ids, kv_segment_ids=segment_ids)

  def grads(attention, v, d_out, **extra):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, **kw, **extra), q, k, v)
    return (out, *vjp(d_out))

  kernel = _jit(lambda v, d: grads(flash_attention, v, d, block_q=BLOCK, block_k=BLOCK))
  want = _jit(lambda v, d: grads(reference.attention_reference, v, d))(v, d_out)
  out, dq, _, _ = kernel(v.at[:, 64:].set(jnp.nan), d_out)
  _, _, dk, dv = kernel(v, d_out.at[:, :64].set(jnp.nan))
  return (out, dq, dk, dv), want


@pytest.mark.parametrize("masking", ["causal", "segments"])
def test_fully_masked_blocks_are_never_read(masking):
  # Blocks of 32: kv blocks 2-3 are hidden from q blocks 0-1, causally or by a segment boundary.
  segment_ids = None if masking == "causal" else jnp.asarray([[1] * 64 + [2] * 64])
  (out, dq, dk, dv), want = _poisoned_run(masking == "causal", segment_ids)
  _assert_close(out[:, :64], want[0][:, :64], jnp.float32, "out rows before the NaN keys")
  _assert_close(dq[:, :64], want[1][:, :64], jnp.float32, "dq rows before the NaN keys")
  _assert_close(dk[:, 64:], want[2][:, 64:], jnp.float32, "dk after the NaN rows")
  _assert_close(dv[:, 64:], want[3][:, 64:], jnp.float32, "dv after the NaN rows")


def test_reference_matches_direct_numpy():
  rng = np.random.default_rng(5)
  batch, length, heads, kv_heads, d = 2, 9, 4, 2, 8
  q = rng.normal(size=(batch, length, heads, d))
  k, v = rng.normal(size=(2, batch, length, kv_heads, d))
  table = rng.normal(size=(NUM_BUCKETS, heads))
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [0] * length])
  got = jax.jit(lambda q, k, v, seg, table: reference.attention_reference(
      q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, relative_bias_table=table,
      num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE, bidirectional=False, sm_scale=0.3))(
          *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(seg),
          jnp.asarray(table, jnp.float32))
  # bucket[r] of relative position r = j - i, for r in -(length - 1)..(length - 1).
  bucket = np.asarray(relative_position.relative_position_bucket(
      jnp.arange(-length + 1, length), False, NUM_BUCKETS, MAX_DISTANCE))
  want = np.zeros_like(q)
  for b, h, i in itertools.product(range(batch), range(heads), range(length)):
    g = h // (heads // kv_heads)
    visible = [j for j in range(length) if seg[b, j] == seg[b, i] != 0 and j <= i]
    if not visible:
      continue  # stays zero
    logits = np.array([0.3 * q[b, i, h] @ k[b, j, g] + table[bucket[j - i + length - 1], h]
                       for j in visible])
    weights = np.exp(logits - logits.max())
    want[b, i, h] = (weights / weights.sum()) @ v[b, visible, g]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_default_scale_is_inverse_sqrt_head_dim():
  rng = np.random.default_rng(6)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 20, 2, HEAD_DIM)), jnp.float32) for _ in range(3))
  got = _jit(lambda q: flash_attention(q, k, v, block_q=BLOCK, block_k=BLOCK))(q)
  want = _jit(lambda q: reference.attention_reference(q, k, v, sm_scale=1 / math.sqrt(HEAD_DIM)))(q)
  _assert_close(got, want, jnp.float32, "out")
  unscaled = _jit(lambda q: reference.attention_reference(q, k, v, sm_scale=1.0))(q)
  assert not np.allclose(np.asarray(got), np.asarray(unscaled), atol=1e-3)


def test_bad_arguments_are_refused():
  x = jnp.zeros((1, 8, 4, HEAD_DIM))
  seg = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    flash_attention(x, x, x, q_segment_ids=seg)
  with pytest.raises(ValueError, match="not a multiple"):
    flash_attention(x, x[:, :, :3], x[:, :, :3])
  with pytest.raises(ValueError, match="num_buckets, H"):
    flash_attention(x, x, x, relative_bias_table=jnp.zeros((32, 3)))
  with pytest.raises(ValueError, match="powers of two"):
    flash_attention(x, x, x, block_q=48)
  with pytest.raises(ValueError, match="dtypes differ"):
    flash_attention(x, x.astype(jnp.bfloat16), x)

"""KV-cache greedy decoding against a naive full-recompute reference."""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.inference import decoding
from sft_jax.models import t5

TINY = t5.T5Config(d_model=32, num_heads=2, head_dim=8, d_ff=64, num_encoder_layers=2,
                   num_decoder_layers=2)
MAX_LEN = 10


@pytest.fixture(scope="module", params=[False, True], ids=["relative_only", "absolute_positions"])
def module(request):
  config = dataclasses.replace(TINY, absolute_positions=request.param)
  return t5.EncoderDecoderModel(config).init(3)


@pytest.fixture(scope="module")
def encoder_tokens():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 259, size=(3, 9)).astype(np.int32)
  for row, length in enumerate([9, 5, 2]):  # different lengths, padding at the end
    tokens[row, length - 1] = 1
    tokens[row, length:] = 0
  return jnp.asarray(tokens)


@nnx.jit
def _full_decode(module, encoder_tokens, decoder_inputs):
  encoded = module.encode(encoder_tokens)
  return module.decode(encoded, (encoder_tokens != 0).astype(jnp.int32), decoder_inputs)


def _naive_greedy(module, encoder_tokens, max_len, eos_id):
  """Re-runs the full decoder on the prefix so far and takes the argmax at its last position.

  The prefix is zero-padded to `max_len` so that one compilation serves every step; the
  causal mask keeps the padding invisible (checked by the teacher-forcing test below).
  """
  batch = encoder_tokens.shape[0]
  out = np.zeros((batch, max_len), np.int32)
  done = np.zeros(batch, bool)
  for step in range(max_len):
    prefix = np.zeros((batch, max_len), np.int32)
    prefix[:, 1:step + 1] = out[:, :step]
    logits = np.asarray(_full_decode(module, encoder_tokens, jnp.asarray(prefix)))
    next_tokens = np.where(done, 0, logits[:, step].argmax(-1))
    out[:, step] = next_tokens
    done |= next_tokens == eos_id
  return out


def test_kv_cache_matches_full_recompute(module, encoder_tokens):
  got = np.asarray(decoding.greedy_decode(module, encoder_tokens, max_decode_length=MAX_LEN,
                                          eos_id=-1))
  want = _naive_greedy(module, encoder_tokens, MAX_LEN, eos_id=-1)
  np.testing.assert_array_equal(got, want)


def test_eos_truncation(module, encoder_tokens):
  free_run = np.asarray(decoding.greedy_decode(module, encoder_tokens,
                                               max_decode_length=MAX_LEN, eos_id=-1))
  # Pretend the token row 0 emits at step 2 is EOS, so at least that row stops early.
  eos = int(free_run[0, 2])
  model = t5.EncoderDecoderModel(TINY, eos_id=eos)
  got = np.asarray(model.predict_batch(module, {"encoder_input_tokens": encoder_tokens}, MAX_LEN))
  want = _naive_greedy(module, encoder_tokens, MAX_LEN, eos_id=eos)
  np.testing.assert_array_equal(got, want)
  first_eos = int(np.argmax(free_run[0] == eos))
  assert got[0, first_eos] == eos and np.all(got[0, first_eos + 1:] == 0)
  for row in range(3):
    hits = np.flatnonzero(got[row] == eos)
    if hits.size:
      assert np.all(got[row, hits[0] + 1:] == 0)
      np.testing.assert_array_equal(got[row, :hits[0] + 1], free_run[row, :hits[0] + 1])


def test_decode_step_bias_matches_full_sequence(module, encoder_tokens):
  """Step-by-step teacher-forced logits equal the full `decode` logits at every position."""
  rng = np.random.default_rng(1)
  dec_in = jnp.asarray(np.concatenate(
      [np.zeros((3, 1), np.int32), rng.integers(3, 259, size=(3, MAX_LEN - 1)).astype(np.int32)],
      1))
  full = np.asarray(_full_decode(module, encoder_tokens, dec_in))

  @nnx.jit
  def stepwise(module, encoder_tokens, dec_in):
    encoded = module.encode(encoder_tokens)
    enc_seg = (encoder_tokens != 0).astype(jnp.int32)
    cross_kv = module.cross_attention_kv(encoded)

    def step(cache, pos):
      logits, cache = module.decode_step(dec_in[:, pos], pos, cache, cross_kv, enc_seg)
      return cache, logits

    _, logits_TxBxV = jax.lax.scan(step, module.init_decode_cache(3, MAX_LEN),
                                   jnp.arange(MAX_LEN))
    return jnp.transpose(logits_TxBxV, (1, 0, 2))

  np.testing.assert_allclose(np.asarray(stepwise(module, encoder_tokens, dec_in)), full,
                             atol=1e-4)

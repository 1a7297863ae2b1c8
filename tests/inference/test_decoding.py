"""KV-cache greedy decoding against a naive full-recompute reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.inference import decoding
from sft_jax.models import t5

TINY = t5.T5Config(d_model=32, num_heads=2, head_dim=8, d_ff=64, num_encoder_layers=2,
                   num_decoder_layers=2)
MAX_LEN = 10


@pytest.fixture(scope="module")
def module():
  return t5.EncoderDecoderModel(TINY).init(3)


@pytest.fixture(scope="module")
def encoder_tokens():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 259, size=(3, 9)).astype(np.int32)
  for row, length in enumerate([9, 5, 2]):  # different lengths, padding at the end
    tokens[row, length - 1] = 1
    tokens[row, length:] = 0
  return jnp.asarray(tokens)


def _naive_greedy(module, encoder_tokens, max_len, eos_id):
  """Re-runs the full decoder on the growing prefix and takes the last argmax each step."""
  encoded = module.encode(encoder_tokens)
  enc_seg = (encoder_tokens != 0).astype(jnp.int32)
  batch = encoder_tokens.shape[0]
  out = np.zeros((batch, max_len), np.int32)
  done = np.zeros(batch, bool)
  for step in range(max_len):
    prefix = np.concatenate([np.zeros((batch, 1), np.int32), out[:, :step]], axis=1)
    logits = np.asarray(module.decode(encoded, enc_seg, jnp.asarray(prefix)))
    next_tokens = np.where(done, 0, logits[:, -1].argmax(-1))
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
      [np.zeros((3, 1), np.int32), rng.integers(3, 259, size=(3, 5)).astype(np.int32)], 1))
  encoded = module.encode(encoder_tokens)
  enc_seg = (encoder_tokens != 0).astype(jnp.int32)
  full = np.asarray(module.decode(encoded, enc_seg, dec_in))
  cache = module.init_decode_cache(3, 6)
  cross_kv = module.cross_attention_kv(encoded)
  for pos in range(6):
    logits, cache = module.decode_step(dec_in[:, pos], jnp.asarray(pos), cache, cross_kv, enc_seg)
    np.testing.assert_allclose(np.asarray(logits), full[:, pos], atol=1e-4)

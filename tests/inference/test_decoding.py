"""Decoding: the KV-cached loop against full recomputation, sampling and its filters against
numpy, stop sequences, padding sides, and one compilation per shape.

Beam search and greedy decoding against `transformers` are in test_generate_hf.py.
"""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.inference import decoding
from sft_jax.models import decoder
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


@functools.partial(nnx.jit, static_argnums=2)
def _generate(module, encoder_tokens, config):
  return decoding.encoder_decoder_generate(module, encoder_tokens, config=config)


def _greedy(module, encoder_tokens, max_len=MAX_LEN, eos_ids=()):
  return np.asarray(_generate(module, encoder_tokens, decoding.DecodeConfig(max_new_tokens=max_len,
                                                                            eos_ids=eos_ids)))


def test_kv_cache_matches_full_recompute(module, encoder_tokens):
  got = _greedy(module, encoder_tokens)
  want = _naive_greedy(module, encoder_tokens, MAX_LEN, eos_id=-1)
  np.testing.assert_array_equal(got, want)


def test_eos_truncation(module, encoder_tokens):
  free_run = _greedy(module, encoder_tokens)
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


# ---- sampling ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5_module():
  return t5.EncoderDecoderModel(TINY).init(3)


def _predict(model, config):
  """Jitted predict_batch of `model` with a static decode config."""
  return nnx.jit(lambda m, b, rng: model.predict_batch(m, b, MAX_LEN, config, rng))


def _t5_predict(module, tokens, config, seed=0):
  out = _predict(t5.EncoderDecoderModel(TINY, eos_id=-1), config)(
      module, {"encoder_input_tokens": tokens}, jax.random.key(seed))
  return np.asarray(out)


def test_sampling_is_reproducible_per_key(t5_module, encoder_tokens):
  config = decoding.DecodeConfig(method="sample", temperature=1.5, top_k=40, top_p=0.9)
  first = _t5_predict(t5_module, encoder_tokens, config, seed=0)
  np.testing.assert_array_equal(_t5_predict(t5_module, encoder_tokens, config, seed=0), first)
  other = _t5_predict(t5_module, encoder_tokens, config, seed=1)
  assert (other != first).any()
  greedy = _t5_predict(t5_module, encoder_tokens, decoding.DecodeConfig())
  assert (first != greedy).any()


@pytest.mark.parametrize("config", [
    decoding.DecodeConfig(method="sample", temperature=1e-4),  # the temperature -> 0 limit
    decoding.DecodeConfig(method="sample", temperature=0.0),
    decoding.DecodeConfig(method="sample", temperature=2.0, top_k=1),
    decoding.DecodeConfig(method="sample", temperature=2.0, top_p=1e-6),
], ids=["temperature_1e-4", "temperature_0", "top_k_1", "top_p_tiny"])
def test_degenerate_sampling_is_greedy(config, t5_module, encoder_tokens):
  want = _greedy(t5_module, encoder_tokens)
  np.testing.assert_array_equal(_t5_predict(t5_module, encoder_tokens, config, seed=5), want)


def _hf_warped(logits, temperature, top_k, top_p):
  """transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, in numpy float64."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k:
    x = np.where(x < np.sort(x)[-top_k], -np.inf, x)
  if top_p < 1.0:
    order = np.argsort(x, kind="stable")  # ascending, as transformers sorts
    probs = np.exp(x[order] - x.max())
    cumulative = np.cumsum(probs / probs.sum())
    remove = cumulative <= 1 - top_p
    remove[-1] = False  # at least one token stays
    x[order[remove]] = -np.inf
  return x


def _softmax(x):
  e = np.exp(x - np.max(x))
  return e / e.sum()


# The tie at 1.0 straddles the top-k cut of k = 4 (both stay); top-p cuts fall between distinct
# values (transformers splits ties there by sort order, sft_jax keeps them), with masses at least
# 0.01 away from the thresholds.
LOGITS = np.array([2.0, 1.0, 1.0, 0.3, 0.3, -0.5, 3.1, -2.0, 0.7, -1.0, 1.6, 0.0], np.float32)
FILTERS = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 4, 1.0), (1.0, 0, 0.82), (1.3, 0, 0.55),
           (0.8, 6, 0.95), (1.0, 2, 0.5)]


@pytest.mark.parametrize("temperature,top_k,top_p", FILTERS)
def test_filtered_distribution_matches_transformers_warpers(temperature, top_k, top_p):
  want = _hf_warped(LOGITS, temperature, top_k, top_p)
  got = np.asarray(decoding.filter_logits(jnp.asarray(LOGITS)[None, :], temperature=temperature, top_k=top_k,
                                          top_p=top_p))[0]
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  np.testing.assert_allclose(_softmax(got), _softmax(want), atol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (1.3, 0, 0.55), (0.8, 6, 0.95)])
def test_sampled_frequencies_match_the_filtered_distribution(temperature, top_k, top_p):
  """40k rows sampled through `generate` land on the support with the renormalized probabilities."""
  rows = 40_000
  logits_NxV = jnp.broadcast_to(jnp.asarray(LOGITS)[None, :], (rows, LOGITS.size))
  config = decoding.DecodeConfig(method="sample", temperature=temperature, top_k=top_k, top_p=top_p,
                                 max_new_tokens=1, eos_ids=())
  tokens = decoding.generate(logits_NxV, (), lambda token, step, cache: (logits_NxV, cache), config,
                             jax.random.key(0))
  counts = np.bincount(np.asarray(tokens)[:, 0], minlength=LOGITS.size)
  want = _softmax(_hf_warped(LOGITS, temperature, top_k, top_p))
  assert not counts[want == 0].any()
  # 4 standard deviations of a frequency over 40k draws is at most 0.01.
  np.testing.assert_allclose(counts / rows, want, atol=0.01)


# ---- stop sequences, padding, compilation ------------------------------------------------------

def _cut_at_stops(free_BxT, stops):
  """numpy reference: each row up to the first step where its tokens end with a stop sequence."""
  out = np.zeros_like(free_BxT)
  for row, tokens in enumerate(free_BxT):
    end = len(tokens)
    for step in range(len(tokens)):
      if any(step + 1 >= len(s) and tuple(tokens[step + 1 - len(s):step + 1]) == s for s in stops):
        end = step + 1
        break
    out[row, :end] = tokens[:end]
  return out


def test_stop_sequences_end_rows_and_stay_in_the_output(t5_module, encoder_tokens):
  free = _greedy(t5_module, encoder_tokens)
  # A pair row 0 emits at steps 3-4, a pair no row emits, a single token row 2 emits at step 6,
  # and a sequence longer than the output.
  stops = ((int(free[0, 3]), int(free[0, 4])), (int(free[1, 0]), 258, 257), (int(free[2, 6]),),
           (5,) * (MAX_LEN + 1))
  config = decoding.DecodeConfig(stop_sequences=stops)
  got = _t5_predict(t5_module, encoder_tokens, config)
  want = _cut_at_stops(free, stops)
  np.testing.assert_array_equal(got, want)
  assert not got[0, 5:].any() and not got[2, 7:].any()  # both ended by then (maybe earlier)


DECODER = decoder.DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                head_dim=8, d_ff=48)


@pytest.fixture(scope="module")
def decoder_module():
  module = decoder.DecoderOnlyModel(DECODER).init(0)
  # Larger embeddings: at initialization the next-token distributions are nearly flat.
  table = module.token_embedder.embedding
  table.value = table[...] * 8.0
  return module


@pytest.mark.parametrize("config", [
    decoding.DecodeConfig(),
    decoding.DecodeConfig(method="sample", temperature=0.9, top_p=0.95),
    decoding.DecodeConfig(method="beam", num_beams=3, length_penalty=0.7),
], ids=["greedy", "sample", "beam"])
def test_left_and_right_padded_prompts_decode_the_same(config, decoder_module):
  prompts = [np.array([5, 9, 13, 2, 40, 7]), np.array([7, 3]), np.array([11, 12, 13, 14])]
  left, right = np.zeros((3, 8), np.int32), np.zeros((3, 8), np.int32)
  for i, p in enumerate(prompts):
    right[i, :len(p)] = p
    left[i, 8 - len(p):] = p
  predict = _predict(decoder.DecoderOnlyModel(DECODER, eos_id=(17,)), config)
  key = jax.random.key(3)
  got_right = np.asarray(predict(decoder_module, {"decoder_input_tokens": jnp.asarray(right)}, key))
  got_left = np.asarray(predict(decoder_module, {"decoder_input_tokens": jnp.asarray(left)}, key))
  np.testing.assert_array_equal(got_left, got_right)
  assert len({tuple(row) for row in got_right}) == 3  # the prompts do steer the outputs


def test_beam_and_sampling_compile_once_per_shape(t5_module, encoder_tokens):
  model = t5.EncoderDecoderModel(TINY)
  traces = []

  def predict(batch, rng, config):
    traces.append(config.method)
    return model.predict_batch(t5_module, batch, MAX_LEN, config, rng)

  predict = jax.jit(predict, static_argnums=2)
  for config in (decoding.DecodeConfig(method="beam", num_beams=2),
                 decoding.DecodeConfig(method="sample", top_k=5)):
    for seed in range(2):
      tokens = predict({"encoder_input_tokens": jnp.roll(encoder_tokens, seed, axis=0)},
                       jax.random.key(seed), config)
      assert tokens.shape == (3, MAX_LEN) and tokens.dtype == jnp.int32
  assert traces == ["beam", "sample"]


def test_config_checks_and_output_length(t5_module, encoder_tokens):
  with pytest.raises(ValueError, match="method='nucleus'"):
    decoding.DecodeConfig(method="nucleus")
  with pytest.raises(ValueError, match="top_p"):
    decoding.DecodeConfig(top_p=0.0)
  with pytest.raises(ValueError, match="early_stopping"):
    decoding.DecodeConfig(early_stopping="sometimes")
  with pytest.raises(ValueError, match="needs an rng"):
    t5.EncoderDecoderModel(TINY).predict_batch(t5_module, {"encoder_input_tokens": encoder_tokens}, MAX_LEN,
                                               decoding.DecodeConfig(method="sample"))
  with pytest.raises(ValueError, match="exceeds the output length"):
    decoding.resolve_config(decoding.DecodeConfig(max_new_tokens=MAX_LEN + 1), MAX_LEN, (1,))
  # Fewer new tokens than the output length: the same tokens, zeros after.
  short = _t5_predict(t5_module, encoder_tokens, decoding.DecodeConfig(max_new_tokens=4))
  np.testing.assert_array_equal(short[:, :4], _greedy(t5_module, encoder_tokens)[:, :4])
  assert short.shape == (3, MAX_LEN) and not short[:, 4:].any()
  # Lists are accepted and stored as tuples: the config stays hashable (static under jit).
  assert hash(decoding.DecodeConfig(eos_ids=[1, 2], stop_sequences=[[3, 4]])) is not None

"""The LLaMA-family decoder on its own: packing, RoPE positions, remat, GQA kernels, decoding, gin files.

Parity with `transformers` (logits, scores, greedy decoding) is in test_hf_io.py.
"""

import dataclasses
import os

from flax import nnx
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax import config as config_lib
from sft_jax.models import decoder

CONFIG = decoder.DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                               head_dim=8, d_ff=48, attention_bias=True,
                               rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "gin_configs", "models")


def _randomize_norms_and_biases(module):
  """Non-trivial norm scales and biases, so that a wrong mapping of either shows in the logits."""
  params = nnx.state(module, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape) if x.ndim <= 2 and x.shape[0] < 64 else x
            for x, k in zip(leaves, keys)]
  nnx.update(module, jax.tree.unflatten(treedef, leaves))
  return module


@pytest.fixture(scope="module")
def module():
  return _randomize_norms_and_biases(decoder.DecoderOnlyModel(CONFIG).init(0))


@nnx.jit
def _logits(module, tokens, segment_ids, positions):
  return module(tokens, segment_ids, positions)


def test_packed_segments_are_isolated_and_positions_restart(module):
  rng = np.random.default_rng(0)
  first, second = rng.integers(3, 64, 7), rng.integers(3, 64, 9)
  row = np.concatenate([first, second, [0, 0]])[None]
  segment_ids = np.array([[1] * 7 + [2] * 9 + [0, 0]])
  positions = np.array([list(range(7)) + list(range(9)) + [0, 0]])
  packed = np.asarray(_logits(module, jnp.asarray(row), jnp.asarray(segment_ids), jnp.asarray(positions)))
  alone = np.asarray(_logits(module, jnp.asarray(second[None]), None, None))
  np.testing.assert_allclose(packed[0, 7:16], alone[0], atol=1e-5)
  # A different first example leaves the second one's logits exactly as they were.
  changed = row.copy()
  changed[0, :7] = rng.integers(3, 64, 7)
  repacked = np.asarray(_logits(module, jnp.asarray(changed), jnp.asarray(segment_ids), jnp.asarray(positions)))
  np.testing.assert_array_equal(repacked[0, 7:16], packed[0, 7:16])
  assert np.abs(repacked[0, :7] - packed[0, :7]).max() > 1e-3


def _batch(seed=0, batch=2, length=16):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 64, (batch, length + 1))
  weights = np.zeros((batch, length), np.float32)
  weights[:, length // 2:] = 1.0
  return {"decoder_input_tokens": jnp.asarray(tokens[:, :-1], jnp.int32),
          "decoder_target_tokens": jnp.asarray(tokens[:, 1:], jnp.int32),
          "decoder_loss_weights": jnp.asarray(weights)}


@pytest.mark.parametrize("tied", [False, True])
def test_loss_fn_runs_under_jit_and_counts_target_tokens(tied):
  model = decoder.DecoderOnlyModel(dataclasses.replace(CONFIG, tie_word_embeddings=tied))
  module = model.init(0)
  batch = _batch()
  loss_sum, weight_sum, aux = nnx.jit(lambda m, b: model.loss_fn(m, b, z_loss=1e-4))(module, batch)
  assert float(weight_sum) == 16.0 and float(aux["weight_sum"]) == 16.0
  # A freshly initialized model is near uniform over the vocabulary, tied head or not.
  assert abs(float(aux["cross_entropy_sum"]) / 16.0 - np.log(64)) < 1.0
  assert float(loss_sum) > float(aux["cross_entropy_sum"])
  # score_batch sums the same weighted log-probabilities the cross-entropy does (no smoothing).
  scores = nnx.jit(model.score_batch)(module, batch)
  np.testing.assert_allclose(-float(jnp.sum(scores)), float(aux["cross_entropy_sum"]), rtol=1e-5)


def _grads(remat_policy):
  config = dataclasses.replace(CONFIG, remat_policy=remat_policy)
  model = decoder.DecoderOnlyModel(config)
  module = model.init(0)
  grads = nnx.jit(nnx.grad(lambda m, b: model.loss_fn(m, b)[0]))(module, _batch(1))
  return jax.tree.leaves(grads)


def test_remat_full_gives_the_same_gradients():
  for got, want in zip(_grads("full"), _grads("none")):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_pallas_gqa_matches_xla(module):
  # The kernel takes 2 kv heads for 4 query heads as they are; xla repeats them.
  pallas = decoder.DecoderOnlyModel(dataclasses.replace(CONFIG, attention_impl="pallas")).init(0)
  nnx.update(pallas, nnx.state(module, nnx.Param))
  segment_ids = jnp.asarray([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4])
  positions = jnp.asarray([list(range(10)) + list(range(6)), list(range(12)) + [0] * 4])
  tokens = _batch(2)["decoder_input_tokens"]
  want = np.asarray(_logits(module, tokens, segment_ids, positions))
  got = np.asarray(_logits(pallas, tokens, segment_ids, positions))
  real = np.asarray(segment_ids) != 0
  np.testing.assert_allclose(got[real], want[real], atol=1e-4)


def test_greedy_decoding_equals_argmax_of_full_recomputation(module):
  """The KV-cached loop against re-running the whole sequence per token; left and right padding agree."""
  model = decoder.DecoderOnlyModel(CONFIG, eos_id=())
  prompts = [np.array([5, 9, 13, 2, 40]), np.array([7, 3])]
  right = np.zeros((2, 6), np.int32)
  left = np.zeros((2, 6), np.int32)
  for i, p in enumerate(prompts):
    right[i, :len(p)] = p
    left[i, 6 - len(p):] = p
  predict = nnx.jit(lambda m, b: model.predict_batch(m, b, 6))
  got = np.asarray(predict(module, {"decoder_input_tokens": jnp.asarray(right)}))
  np.testing.assert_array_equal(np.asarray(predict(module, {"decoder_input_tokens": jnp.asarray(left)})), got)
  # A network built to rematerialize in training decodes the same.
  remat = decoder.DecoderOnlyModel(dataclasses.replace(CONFIG, remat_policy="full")).init(0)
  nnx.update(remat, nnx.state(module, nnx.Param))
  np.testing.assert_array_equal(np.asarray(predict(remat, {"decoder_input_tokens": jnp.asarray(right)})), got)
  for i, prompt in enumerate(prompts):
    # One fixed-length buffer: under the causal mask the zeros after the sequence change nothing.
    sequence = np.zeros((1, len(prompt) + 6), np.int32)
    sequence[0, :len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + 6):
      logits = _logits(module, jnp.asarray(sequence), None, None)
      sequence[0, t] = int(jnp.argmax(logits[0, t - 1]))
    np.testing.assert_array_equal(got[i], sequence[0, len(prompt):])


def test_eos_stops_a_row_and_pads_it_with_zeros(module):
  prompt = jnp.asarray([[5, 9, 13, 2, 40]])
  batch = {"decoder_input_tokens": prompt}
  predict = lambda model: np.asarray(nnx.jit(lambda m, b: model.predict_batch(m, b, 6))(module, batch))  # noqa: E731
  free = predict(decoder.DecoderOnlyModel(CONFIG, eos_id=()))
  eos = int(free[0, 2])
  stopped = predict(decoder.DecoderOnlyModel(CONFIG, eos_id=(63, eos)))
  first = int(np.flatnonzero(free[0] == eos)[0])
  np.testing.assert_array_equal(stopped[0, :first + 1], free[0, :first + 1])
  assert not stopped[0, first + 1:].any()


def test_config_validation():
  with pytest.raises(ValueError, match="not a multiple"):
    decoder.DecoderConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="lacks"):
    decoder.DecoderConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0})
  with pytest.raises(ValueError, match="yarn"):
    decoder.DecoderConfig(rope_scaling={"rope_type": "yarn", "factor": 8.0})
  assert decoder.DecoderConfig(rope_scaling={"type": "default"}).rope_scaling is None
  window = decoder.DecoderOnlyModel(dataclasses.replace(CONFIG, sliding_window=8)).init(0)
  with pytest.raises(ValueError, match="sliding_window=8"):
    window(jnp.ones((1, 9), jnp.int32))


@pytest.mark.parametrize("name,params", [
    ("llama_tiny.gin", None), ("llama3_8b.gin", 8_030_261_248), ("llama3_70b.gin", 70_553_706_496),
    ("mistral_7b.gin", 7_248_023_552), ("qwen2_0_5b.gin", 494_032_768)])
def test_model_gin_files_build_the_published_shapes(name, params):
  gin.clear_config()
  try:
    config_lib.parse_gin_flags([f"--gin_file={os.path.join(GIN_DIR, name)}"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(model, decoder.DecoderOnlyModel)
  abstract = nnx.state(nnx.eval_shape(lambda: model.init(0)), nnx.Param)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  if params is not None:  # the parameter counts Hugging Face reports for these checkpoints
    assert count == params, count

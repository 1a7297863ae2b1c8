"""score_batch and the scoring helpers against numpy log-softmax."""

from flax import nnx
import jax.numpy as jnp
import numpy as np

from sft_jax.inference import scoring
from sft_jax.models import t5

TINY = t5.T5Config(d_model=32, num_heads=2, head_dim=8, d_ff=64, num_encoder_layers=2,
                   num_decoder_layers=2)


def _np_log_softmax(logits):
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_score_batch_equals_log_softmax_gather_sum():
  model = t5.EncoderDecoderModel(TINY)
  module = model.init(1)
  enc = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 10, 11, 12, 1]], np.int32)
  tgt = np.array([[20, 21, 1, 0], [30, 1, 0, 0]], np.int32)
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)
  batch = {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec),
           "decoder_target_tokens": jnp.asarray(tgt)}
  score = nnx.jit(model.score_batch)
  got = np.asarray(score(module, batch))

  @nnx.jit
  def logits_fn(module):
    encoded = module.encode(jnp.asarray(enc))
    return module.decode(encoded, jnp.asarray((enc != 0).astype(np.int32)), jnp.asarray(dec))

  logits = np.asarray(logits_fn(module))
  token_ll = np.take_along_axis(_np_log_softmax(logits), tgt[..., None], -1)[..., 0]
  want = (token_ll * (tgt != 0)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)

  # Explicit loss weights take precedence over `targets != 0`.
  weights = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], np.int32)
  got_weighted = np.asarray(score(
      module, {**batch, "decoder_loss_weights": jnp.asarray(weights)}))
  np.testing.assert_allclose(got_weighted, (token_ll * weights).sum(-1), rtol=1e-5)


def test_token_log_likelihoods_masks_zero_weights():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 3))
  weights = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
  got = np.asarray(scoring.token_log_likelihoods(jnp.asarray(logits), jnp.asarray(targets),
                                                 jnp.asarray(weights)))
  want = np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1)[..., 0] * weights
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(scoring.sequence_log_likelihood(jnp.asarray(logits), jnp.asarray(targets),
                                                 jnp.asarray(weights))),
      want.sum(-1), rtol=1e-5)

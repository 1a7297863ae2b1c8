"""weighted_cross_entropy against numpy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.models import losses


def _log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _reference(logits, targets, weights, label_smoothing, z_loss):
  """Dense t5x formula: smoothed one-hot targets, z-loss, minus the target entropy."""
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  soft = np.full(logits.shape, low)
  np.put_along_axis(soft, targets[..., None], confidence, axis=-1)
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  per_token = -(soft * _log_softmax(logits.astype(np.float64))).sum(-1)
  z_term = z_loss * log_z**2
  entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
  loss = ((per_token + z_term - entropy) * weights).sum()
  return loss, (z_term * weights).sum(), weights.sum()


def _inputs(seed=0, batch=2, length=5, vocab=11):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 3
  targets = rng.integers(1, vocab, size=(batch, length))
  weights = (rng.random((batch, length)) > 0.3).astype(np.float32)
  return logits, targets, weights


def test_plain_cross_entropy_matches_log_softmax():
  logits, targets, weights = _inputs()
  loss, z, total = losses.weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  log_probs = _log_softmax(logits.astype(np.float64))
  want = -(np.take_along_axis(log_probs, targets[..., None], -1)[..., 0] * weights).sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(z) == 0.0
  assert float(total) == weights.sum()


@pytest.mark.parametrize("label_smoothing,z_loss", [(0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)])
def test_label_smoothing_and_z_loss(label_smoothing, z_loss):
  logits, targets, weights = _inputs(seed=1)
  got = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                      jnp.asarray(weights), label_smoothing, z_loss)
  want = _reference(logits, targets, weights, label_smoothing, z_loss)
  for g, w in zip(got, want):
    np.testing.assert_allclose(float(g), w, rtol=1e-5, atol=1e-5)
  if z_loss:
    assert float(got[1]) > 0


def test_padding_and_zero_weights_do_not_count():
  logits, targets, weights = _inputs(seed=2)
  base = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                       jnp.asarray(weights), 0.1, 1e-3)
  # Append padding positions (target 0, weight 0) with wild logits.
  pad_logits = np.concatenate([logits, np.full((2, 3, logits.shape[-1]), 1e4, np.float32)], 1)
  pad_targets = np.concatenate([targets, np.zeros((2, 3), targets.dtype)], 1)
  pad_weights = np.concatenate([weights, np.zeros((2, 3), np.float32)], 1)
  padded = losses.weighted_cross_entropy(jnp.asarray(pad_logits), jnp.asarray(pad_targets),
                                         jnp.asarray(pad_weights), 0.1, 1e-3)
  np.testing.assert_allclose(np.asarray(padded), np.asarray(base), rtol=1e-6)
  # Changing logits and targets where the weight is 0 changes nothing either.
  changed_logits = np.where(weights[..., None] == 0, -logits * 5, logits)
  changed_targets = np.where(weights == 0, 3, targets)
  changed = losses.weighted_cross_entropy(jnp.asarray(changed_logits),
                                          jnp.asarray(changed_targets), jnp.asarray(weights),
                                          0.1, 1e-3)
  np.testing.assert_allclose(np.asarray(changed), np.asarray(base), rtol=1e-6)


def test_per_example_weights_make_the_loss_a_mean_of_example_means():
  rng = np.random.default_rng(1)
  # Two packed rows: segments of 1, 3 and 2 target tokens, then one of 4 and one of 1, padding after.
  segments = np.array([[1, 2, 2, 2, 3, 3, 0, 0], [1, 1, 1, 1, 2, 0, 0, 0]])
  weights = (segments > 0).astype(np.float32)
  weights[0, 3] = 0  # a token of a segment that the loss skips
  logits = rng.normal(size=(2, 8, 7)).astype(np.float32)
  targets = rng.integers(1, 7, size=(2, 8))
  scaled = np.asarray(losses.per_example_weights(jnp.asarray(weights), jnp.asarray(segments)))
  loss, _, total = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(scaled))

  nll = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
  example_means = [nll[r][(segments[r] == s) & (weights[r] > 0)].mean()
                   for r in range(2) for s in np.unique(segments[r]) if s]
  assert float(total) == pytest.approx(5.0)  # one unit of weight per example
  assert float(loss) / float(total) == pytest.approx(np.mean(example_means), rel=1e-5)
  assert np.all(scaled[segments == 0] == 0) and scaled[0, 3] == 0


def test_per_example_weights_without_segment_ids_treat_a_row_as_one_example():
  weights = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
  scaled = np.asarray(losses.per_example_weights(jnp.asarray(weights), None))
  np.testing.assert_allclose(scaled, [[1 / 3, 1 / 3, 1 / 3, 0], [1, 0, 0, 0]], rtol=1e-6)

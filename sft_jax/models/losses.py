"""Token cross-entropy with label smoothing and z-loss, as in t5x `cross_entropy_with_logits`."""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp


def target_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
  """float32 loss weights of a batch: `decoder_loss_weights`, else 1 on non-zero targets."""
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = batch["decoder_target_tokens"] != 0
  return weights.astype(jnp.float32)


def target_token_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                      label_smoothing: float = 0.0,
                      z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The models' `loss_fn` result: (loss_sum, weight_sum, aux), aux holding sums over weighted tokens."""
  loss_sum, z_loss_sum, weight_sum = weighted_cross_entropy(
      logits_BxTxV, targets_BxT, weights_BxT, label_smoothing, z_loss)
  correct_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
  aux = {
      "cross_entropy_sum": loss_sum - z_loss_sum,
      "z_loss_sum": z_loss_sum,
      "correct_sum": jnp.sum(jnp.where(correct_BxT, weights_BxT, 0.0)),
      "weight_sum": weight_sum,
  }
  return loss_sum, weight_sum, aux


def weighted_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                           weights_BxT: jax.Array | None, label_smoothing: float = 0.0,
                           z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (loss_sum, z_loss_sum, weight_sum) summed over weighted tokens.

  `loss_sum` already includes the z-loss term (`z_loss * logsumexp(logits)**2` per token) and is
  shifted by the entropy of the smoothed targets so that a perfect prediction scores 0, as in t5x.
  Callers normalize by a global token count; `weights_BxT=None` weighs every token by 1.
  """
  vocab_size = logits_BxTxV.shape[-1]
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  if weights_BxT is None:
    weights_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
  weights_BxT = weights_BxT.astype(jnp.float32)

  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * math.log(confidence)
                           + (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20))

  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  log_probs_BxTxV = logits_BxTxV - log_z_BxT[..., None]
  target_log_prob_BxT = jnp.take_along_axis(
      log_probs_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  # sum_v soft_target_v * log p_v without materializing the [B, T, V] one-hot targets.
  cross_entropy_BxT = -((confidence - low_confidence) * target_log_prob_BxT
                        + low_confidence * jnp.sum(log_probs_BxTxV, axis=-1))
  z_loss_BxT = z_loss * jnp.square(log_z_BxT)
  loss_BxT = cross_entropy_BxT + z_loss_BxT - normalizing_constant

  # `where` rather than a product so that non-finite logits on padding cannot leak into the sum.
  nonzero_BxT = weights_BxT != 0
  loss_sum = jnp.sum(jnp.where(nonzero_BxT, loss_BxT * weights_BxT, 0.0))
  z_loss_sum = jnp.sum(jnp.where(nonzero_BxT, z_loss_BxT * weights_BxT, 0.0))
  return loss_sum, z_loss_sum, jnp.sum(weights_BxT)


def per_example_weights(weights_BxT: jax.Array, segment_ids_BxT: jax.Array | None) -> jax.Array:
  """Scales each example's token weights to sum to 1, so that every example weighs the same.

  With these weights a token-weighted sum divided by the sum of weights is the mean over
  examples of each example's mean token loss (t5x's AVERAGE_PER_SEQUENCE): a one-token
  answer counts as much as a sixteen-token one. Examples are told apart by segment id
  in packed rows; without segment ids a row is one example.
  """
  weights_BxT = weights_BxT.astype(jnp.float32)
  if segment_ids_BxT is None:
    segment_ids_BxT = (weights_BxT != 0).astype(jnp.int32)
  same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  example_weight_BxT = jnp.einsum("btu,bu->bt", same_BxTxT.astype(jnp.float32), weights_BxT)
  return jnp.where(weights_BxT != 0, weights_BxT / jnp.maximum(example_weight_BxT, 1e-9), 0.0)

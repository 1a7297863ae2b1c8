"""Log-likelihood of target tokens under a model's logits (scoring and rank classification)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_likelihoods(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                          weights_BxT: jax.Array | None = None) -> jax.Array:
  """Natural-log probability of each target token times its weight, [B, T] float32."""
  log_probs_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  token_ll_BxT = jnp.take_along_axis(
      log_probs_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if weights_BxT is None:
    return token_ll_BxT
  weights_BxT = weights_BxT.astype(jnp.float32)
  return jnp.where(weights_BxT != 0, token_ll_BxT * weights_BxT, 0.0)


def sequence_log_likelihood(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                            weights_BxT: jax.Array | None = None) -> jax.Array:
  """Sum over each row of the weighted target-token log-probabilities, [B] float32."""
  return jnp.sum(token_log_likelihoods(logits_BxTxV, targets_BxT, weights_BxT), axis=-1)

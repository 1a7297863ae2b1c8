"""Greedy decoding for encoder-decoder networks with an explicit, preallocated KV cache.

Everything here is a pure function of the network's parameters and the inputs (caches are
plain arrays threaded through a `lax.while_loop`), so it can run under `jax.jit` after
`nnx.split`/`nnx.merge` without mutating NNX state.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp


class IncrementalEncoderDecoder(Protocol):
  """What greedy decoding needs from a network (implemented by `T5Transformer`)."""

  def encode(self, encoder_input_tokens_BxS: jax.Array, encoder_segment_ids: jax.Array | None,
             encoder_positions: jax.Array | None) -> jax.Array: ...

  def init_decode_cache(self, batch_size: int, max_length: int) -> Any: ...

  def cross_attention_kv(self, encoded_BxSxD: jax.Array) -> Any: ...

  def decode_step(self, token_B: jax.Array, position: jax.Array, cache: Any, cross_kv: Any,
                  encoder_segment_ids_BxS: jax.Array) -> tuple[jax.Array, Any]: ...


def greedy_decode(module: IncrementalEncoderDecoder, encoder_input_tokens_BxS: jax.Array,
                  encoder_segment_ids_BxS: jax.Array | None = None,
                  encoder_positions_BxS: jax.Array | None = None, *, max_decode_length: int,
                  eos_id: int = 1, decoder_start_token: int = 0) -> jax.Array:
  """Argmax decoding of up to `max_decode_length` tokens per row, [B, T] int32.

  A row's EOS is kept and every later position is 0; the loop stops once all rows are done.
  """
  batch = encoder_input_tokens_BxS.shape[0]
  if encoder_segment_ids_BxS is None:
    encoder_segment_ids_BxS = (encoder_input_tokens_BxS != 0).astype(jnp.int32)
  encoded_BxSxD = module.encode(encoder_input_tokens_BxS, encoder_segment_ids_BxS,
                                encoder_positions_BxS)
  cross_kv = module.cross_attention_kv(encoded_BxSxD)
  cache = module.init_decode_cache(batch, max_decode_length)

  def cond_fn(carry):
    step, _, _, _, done_B = carry
    return (step < max_decode_length) & ~jnp.all(done_B)

  def body_fn(carry):
    step, token_B, cache, out_BxT, done_B = carry
    logits_BxV, cache = module.decode_step(token_B, step, cache, cross_kv,
                                           encoder_segment_ids_BxS)
    next_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    next_B = jnp.where(done_B, 0, next_B)
    out_BxT = jax.lax.dynamic_update_slice(out_BxT, next_B[:, None], (0, step))
    done_B = done_B | (next_B == eos_id)
    return step + 1, next_B, cache, out_BxT, done_B

  init = (jnp.asarray(0, jnp.int32),
          jnp.full((batch,), decoder_start_token, jnp.int32),
          cache,
          jnp.zeros((batch, max_decode_length), jnp.int32),
          jnp.zeros((batch,), bool))
  _, _, _, out_BxT, _ = jax.lax.while_loop(cond_fn, body_fn, init)
  return out_BxT

"""T5 v1.1 / Flan-T5 encoder-decoder network and its t5x-style model interface.

T5 v1.1: pre-norm RMSNorm residual blocks, gated-GELU MLPs, no biases, relative position
buckets (one bias table per stack, shared by all its layers), untied output head. Parameter
names follow t5x (`token_embedder`, `encoder.layers[i].attention.query` ...). The original T5
(v1.0: ReLU MLP, output head tied to the embedding and fed decoder outputs scaled by
d_model**-0.5) is the same network with `feed_forward_proj="relu"`, `tie_word_embeddings=True`
and `scale_decoder_outputs=True`; `sft_jax.models.hf_io` reads both from Hugging Face.

T5's only position signal is the relative bias inside self-attention, so cross-attention sees no
positions: a model trained from scratch must first learn induction-style copying before it can
emit an input span in order. `absolute_positions=True` adds a fixed sinusoidal embedding of each
token's per-segment position (as in the original Transformer) to both stacks' inputs; it has no
parameters, so pretrained T5 checkpoints load unchanged with it off (the default).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flax import nnx
import gin
import jax
import jax.numpy as jnp

from sft_jax.inference import decoding
from sft_jax.inference import scoring
from sft_jax.models import attention
from sft_jax.models import layers
from sft_jax.models import losses

# Per-layer self-attention cache {"k", "v"}: [B, max_len, H, D_head] each.
DecodeCache = tuple[dict[str, jax.Array], ...]
# Per-layer cross-attention (keys, values) of the encoder output: [B, S, H, D_head] each.
CrossKV = tuple[tuple[jax.Array, jax.Array], ...]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 network (v1.1 by default); the defaults are a tiny byte-level model."""
  vocab_size: int = 259  # seqio.ByteVocabulary: pad=0, eos=1, unk=2, bytes 3..258
  d_model: int = 128
  num_heads: int = 4
  head_dim: int = 32
  d_ff: int = 512
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  absolute_positions: bool = False  # add sinusoidal per-segment positions (not in T5)
  # Hugging Face's name for the MLP: "gated-gelu" (v1.1, Flan-T5; tanh-approximate GELU),
  # "relu" (v1.0), or generally "ACT" / "gated-ACT" with ACT in layers.MLP_ACTIVATIONS.
  feed_forward_proj: str = "gated-gelu"
  layer_norm_epsilon: float = 1e-6
  # The output head is the token embedding table (v1.0) rather than its own kernel.
  tie_word_embeddings: bool = False
  # Decoder outputs are multiplied by d_model**-0.5 before the head, as v1.0 does with its tied head.
  scale_decoder_outputs: bool = False
  # What each layer keeps for the backward pass (layers.REMAT_POLICIES): "none" keeps all
  # activations; "full" recomputes each layer's forward, trading compute for memory.
  remat_policy: str = "none"

  def __post_init__(self):
    layers.check_remat_policy(self.remat_policy)
    if self.absolute_positions and self.d_model % 2:
      raise ValueError(f"T5Config: absolute_positions needs an even d_model, got {self.d_model}")
    mlp_activation(self.feed_forward_proj)  # fails early on a name the MLP cannot build
    # The decoder's causal buckets keep num_buckets // 2 exact distances; a max_distance not above
    # that makes the log-spaced buckets divide by log(1) = 0 (HF then indexes out of its table).
    if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
      raise ValueError(f"T5Config: relative_attention_max_distance={self.relative_attention_max_distance} "
                       f"must exceed relative_attention_num_buckets // 2 = "
                       f"{self.relative_attention_num_buckets // 2}")


def mlp_activation(feed_forward_proj: str) -> tuple[str, bool]:
  """(activation, gated) of a Hugging Face `feed_forward_proj` such as "gated-gelu" or "relu"."""
  gated, _, name = feed_forward_proj.rpartition("-")
  if gated not in ("", "gated") or not name:
    raise ValueError(f"T5Config: feed_forward_proj={feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")
  # HF maps "gated-gelu" (only that spelling) to the tanh approximation T5 v1.1 used.
  activation = "gelu_new" if feed_forward_proj == "gated-gelu" else name
  if activation not in layers.MLP_ACTIVATIONS:
    raise ValueError(f"T5Config: feed_forward_proj={feed_forward_proj!r} has activation {name!r}; "
                     f"supported: {sorted(layers.MLP_ACTIVATIONS)}")
  return activation, bool(gated)


def _common_kwargs(config: T5Config, rngs: nnx.Rngs) -> dict[str, Any]:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)


def _attention(config: T5Config, rngs: nnx.Rngs) -> attention.MultiHeadAttention:
  return attention.MultiHeadAttention(
      config.d_model, config.num_heads, config.head_dim, dropout_rate=config.dropout_rate,
      attention_impl=config.attention_impl, **_common_kwargs(config, rngs))


def _norm(config: T5Config) -> layers.RMSNorm:
  return layers.RMSNorm(config.d_model, epsilon=config.layer_norm_epsilon,
                        dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def _mlp(config: T5Config, rngs: nnx.Rngs) -> layers.Mlp:
  activation, gated = mlp_activation(config.feed_forward_proj)
  return layers.Mlp(config.d_model, config.d_ff, activation=activation, gated=gated,
                    dropout_rate=config.dropout_rate, **_common_kwargs(config, rngs))


def _relpos_bias(config: T5Config, bidirectional: bool,
                 rngs: nnx.Rngs) -> attention.RelativePositionBias:
  return attention.RelativePositionBias(
      config.relative_attention_num_buckets, config.relative_attention_max_distance,
      config.num_heads, bidirectional=bidirectional, param_dtype=jnp.dtype(config.param_dtype),
      rngs=rngs)


class EncoderLayer(nnx.Module):
  """Self-attention block then MLP block, each pre-normed with a residual connection."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.dropout_rate = config.dropout_rate
    self.pre_attention_layer_norm = _norm(config)
    self.attention = _attention(config, rngs)
    self.pre_mlp_layer_norm = _norm(config)
    self.mlp = _mlp(config, rngs)

  def __call__(self, x_BxSxD: jax.Array, segment_ids_BxS: jax.Array,
               bias_BxHxSxS: jax.Array | attention.RelativeBias,
               dropout_rng: jax.Array | None) -> jax.Array:
    rngs = layers.split_rng(dropout_rng, 4)
    h_BxSxD = self.pre_attention_layer_norm(x_BxSxD)
    h_BxSxD = self.attention(h_BxSxD, h_BxSxD, q_segment_ids_BxQ=segment_ids_BxS,
                             kv_segment_ids_BxK=segment_ids_BxS, causal=False,
                             bias_BxHxQxK=bias_BxHxSxS, dropout_rng=rngs[0])
    x_BxSxD = x_BxSxD + layers.dropout(h_BxSxD, self.dropout_rate, rngs[1])
    h_BxSxD = self.mlp(self.pre_mlp_layer_norm(x_BxSxD), dropout_rng=rngs[2])
    return x_BxSxD + layers.dropout(h_BxSxD, self.dropout_rate, rngs[3])


class DecoderLayer(nnx.Module):
  """Causal self-attention, cross-attention to the encoder, then MLP; all pre-normed."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.dropout_rate = config.dropout_rate
    self.pre_self_attention_layer_norm = _norm(config)
    self.self_attention = _attention(config, rngs)
    self.pre_cross_attention_layer_norm = _norm(config)
    self.encoder_decoder_attention = _attention(config, rngs)
    self.pre_mlp_layer_norm = _norm(config)
    self.mlp = _mlp(config, rngs)

  def _cross_and_mlp(self, x_BxTxD, cross_k_BxSxHxD, cross_v_BxSxHxD, q_segment_ids_BxT,
                     encoder_segment_ids_BxS, rngs, impl=None):
    h_BxTxD = self.encoder_decoder_attention.attend(
        self.pre_cross_attention_layer_norm(x_BxTxD), cross_k_BxSxHxD, cross_v_BxSxHxD,
        q_segment_ids_BxQ=q_segment_ids_BxT, kv_segment_ids_BxK=encoder_segment_ids_BxS,
        causal=False, dropout_rng=rngs[0], impl=impl)
    x_BxTxD = x_BxTxD + layers.dropout(h_BxTxD, self.dropout_rate, rngs[1])
    h_BxTxD = self.mlp(self.pre_mlp_layer_norm(x_BxTxD), dropout_rng=rngs[2])
    return x_BxTxD + layers.dropout(h_BxTxD, self.dropout_rate, rngs[3])

  def __call__(self, x_BxTxD: jax.Array, encoded_BxSxD: jax.Array, segment_ids_BxT: jax.Array,
               encoder_segment_ids_BxS: jax.Array,
               bias_BxHxTxT: jax.Array | attention.RelativeBias,
               dropout_rng: jax.Array | None) -> jax.Array:
    rngs = layers.split_rng(dropout_rng, 6)
    h_BxTxD = self.pre_self_attention_layer_norm(x_BxTxD)
    h_BxTxD = self.self_attention(h_BxTxD, h_BxTxD, q_segment_ids_BxQ=segment_ids_BxT,
                                  kv_segment_ids_BxK=segment_ids_BxT, causal=True,
                                  bias_BxHxQxK=bias_BxHxTxT, dropout_rng=rngs[0])
    x_BxTxD = x_BxTxD + layers.dropout(h_BxTxD, self.dropout_rate, rngs[1])
    cross_k, cross_v = self.encoder_decoder_attention.project_kv(encoded_BxSxD)
    return self._cross_and_mlp(x_BxTxD, cross_k, cross_v, segment_ids_BxT,
                               encoder_segment_ids_BxS, rngs[2:])

  def step(self, x_Bx1xD: jax.Array, cache: dict[str, jax.Array], cross_kv: tuple[jax.Array, ...],
           position: jax.Array, encoder_segment_ids_BxS: jax.Array,
           bias_BxHx1xL: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoding position: writes its key/value into `cache` at `position`, attends to <= it."""
    batch, max_len = cache["k"].shape[:2]
    h_Bx1xD = self.pre_self_attention_layer_norm(x_Bx1xD)
    k_Bx1xHxD, v_Bx1xHxD = self.self_attention.project_kv(h_Bx1xD)
    index = (0, position, 0, 0)
    k_BxLxHxD = jax.lax.dynamic_update_slice(cache["k"], k_Bx1xHxD.astype(cache["k"].dtype), index)
    v_BxLxHxD = jax.lax.dynamic_update_slice(cache["v"], v_Bx1xHxD.astype(cache["v"].dtype), index)
    # Causality through segment ids: cache slots after `position` are marked as padding.
    filled_L = (jnp.arange(max_len) <= position).astype(jnp.int32)
    kv_segment_ids_BxL = jnp.broadcast_to(filled_L[None, :], (batch, max_len))
    q_segment_ids_Bx1 = jnp.ones((batch, 1), jnp.int32)
    # Single-query steps use the XLA path whatever the configured impl: there is no block of
    # queries to tile, and the dense bias row of `position` is tiny.
    h_Bx1xD = self.self_attention.attend(
        h_Bx1xD, k_BxLxHxD, v_BxLxHxD, q_segment_ids_BxQ=q_segment_ids_Bx1,
        kv_segment_ids_BxK=kv_segment_ids_BxL, causal=False, bias_BxHxQxK=bias_BxHx1xL,
        impl="xla")
    x_Bx1xD = x_Bx1xD + h_Bx1xD
    x_Bx1xD = self._cross_and_mlp(x_Bx1xD, cross_kv[0], cross_kv[1], q_segment_ids_Bx1,
                                  encoder_segment_ids_BxS, [None] * 4, impl="xla")
    return x_Bx1xD, {"k": k_BxLxHxD, "v": v_BxLxHxD}


class Encoder(nnx.Module):
  """Stack of encoder layers sharing one bidirectional relative position bias."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.dropout_rate = config.dropout_rate
    self.attention_impl = config.attention_impl
    self.remat_policy = config.remat_policy
    self.relpos_bias = _relpos_bias(config, True, rngs)
    self.layers = nnx.List([EncoderLayer(config, rngs=rngs)
                            for _ in range(config.num_encoder_layers)])
    self.encoder_norm = _norm(config)

  def __call__(self, x_BxSxD: jax.Array, segment_ids_BxS: jax.Array, positions_BxS: jax.Array,
               dropout_rng: jax.Array | None) -> jax.Array:
    rngs = layers.split_rng(dropout_rng, len(self.layers) + 2)
    bias_BxHxSxS = self.relpos_bias.self_attention_bias(positions_BxS, self.attention_impl)
    x_BxSxD = layers.dropout(x_BxSxD, self.dropout_rate, rngs[0])
    for layer, rng in zip(self.layers, rngs[2:]):
      x_BxSxD = layers.call_layer(layer, x_BxSxD, segment_ids_BxS, bias_BxHxSxS, rng,
                                  remat_policy=self.remat_policy)
    return layers.dropout(self.encoder_norm(x_BxSxD), self.dropout_rate, rngs[1])


class Decoder(nnx.Module):
  """Stack of decoder layers sharing one causal relative position bias, plus an untied head.

  With `tie_word_embeddings` there is no `logits_dense`: `T5Transformer` applies the head.
  """

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.dropout_rate = config.dropout_rate
    self.attention_impl = config.attention_impl
    self.remat_policy = config.remat_policy
    self.relpos_bias = _relpos_bias(config, False, rngs)
    self.layers = nnx.List([DecoderLayer(config, rngs=rngs)
                            for _ in range(config.num_decoder_layers)])
    self.decoder_norm = _norm(config)
    if not config.tie_word_embeddings:
      self.logits_dense = layers.DenseGeneral((config.d_model,), (config.vocab_size,),
                                              ("embed", "vocab"), **_common_kwargs(config, rngs))

  def __call__(self, y_BxTxD: jax.Array, encoded_BxSxD: jax.Array, segment_ids_BxT: jax.Array,
               positions_BxT: jax.Array, encoder_segment_ids_BxS: jax.Array,
               dropout_rng: jax.Array | None) -> jax.Array:
    """Final-normed decoder outputs [B, T, D] (the head is applied by `T5Transformer`)."""
    rngs = layers.split_rng(dropout_rng, len(self.layers) + 2)
    bias_BxHxTxT = self.relpos_bias.self_attention_bias(positions_BxT, self.attention_impl)
    y_BxTxD = layers.dropout(y_BxTxD, self.dropout_rate, rngs[0])
    for layer, rng in zip(self.layers, rngs[2:]):
      y_BxTxD = layers.call_layer(layer, y_BxTxD, encoded_BxSxD, segment_ids_BxT,
                                  encoder_segment_ids_BxS, bias_BxHxTxT, rng,
                                  remat_policy=self.remat_policy)
    return layers.dropout(self.decoder_norm(y_BxTxD), self.dropout_rate, rngs[1])


class T5Transformer(nnx.Module):
  """T5 encoder-decoder; `decode_step` runs one position against an explicit KV cache."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.config = config
    self.token_embedder = layers.Embed(config.vocab_size, config.d_model,
                                       **_common_kwargs(config, rngs))
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)

  def _dropout_rng(self, deterministic: bool, dropout_rng: jax.Array | None) -> jax.Array | None:
    if deterministic or self.config.dropout_rate == 0.0:
      return None
    if dropout_rng is None:
      raise ValueError("deterministic=False with dropout_rate > 0 needs a dropout_rng.")
    return dropout_rng

  def _head(self, y_BxTxD: jax.Array) -> jax.Array:
    """Float32 logits of final-normed decoder outputs."""
    if self.config.scale_decoder_outputs:
      y_BxTxD = y_BxTxD * jnp.asarray(self.config.d_model ** -0.5, y_BxTxD.dtype)
    if self.config.tie_word_embeddings:
      logits_BxTxV = self.token_embedder.attend(y_BxTxD)
    else:  # T5 v1.1's untied head takes the outputs unscaled.
      logits_BxTxV = self.decoder.logits_dense(y_BxTxD)
    return layers.constrain(logits_BxTxV.astype(jnp.float32), layers.LOGITS_AXES)

  def _embed(self, tokens_BxL: jax.Array, positions_BxL: jax.Array) -> jax.Array:
    x_BxLxD = self.token_embedder(tokens_BxL)
    if self.config.absolute_positions:
      x_BxLxD = x_BxLxD + sinusoidal_positions(positions_BxL, self.config.d_model).astype(x_BxLxD.dtype)
    return x_BxLxD

  def encode(self, encoder_input_tokens_BxS: jax.Array,
             encoder_segment_ids: jax.Array | None = None,
             encoder_positions: jax.Array | None = None, *, deterministic: bool = True,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """Encoder output [B, S, D]; segment ids default to `tokens != 0`, positions to arange."""
    if encoder_segment_ids is None:
      encoder_segment_ids = (encoder_input_tokens_BxS != 0).astype(jnp.int32)
    if encoder_positions is None:
      encoder_positions = _default_positions(encoder_input_tokens_BxS)
    x_BxSxD = self._embed(encoder_input_tokens_BxS, encoder_positions)
    return self.encoder(x_BxSxD, encoder_segment_ids, encoder_positions,
                        self._dropout_rng(deterministic, dropout_rng))

  def decode(self, encoded_BxSxD: jax.Array, encoder_segment_ids: jax.Array | None,
             decoder_input_tokens_BxT: jax.Array, decoder_segment_ids: jax.Array | None = None,
             decoder_positions: jax.Array | None = None, *, deterministic: bool = True,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """Float32 logits [B, T, V] for every decoder position (teacher forcing).

    `decoder_segment_ids=None` means one segment per row (padding at the end is harmless under
    the causal mask); `encoder_segment_ids=None` means every encoder position is visible.
    """
    if encoder_segment_ids is None:
      encoder_segment_ids = jnp.ones(encoded_BxSxD.shape[:2], jnp.int32)
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones(decoder_input_tokens_BxT.shape, jnp.int32)
    if decoder_positions is None:
      decoder_positions = _default_positions(decoder_input_tokens_BxT)
    y_BxTxD = self._embed(decoder_input_tokens_BxT, decoder_positions)
    y_BxTxD = self.decoder(y_BxTxD, encoded_BxSxD, decoder_segment_ids, decoder_positions,
                           encoder_segment_ids, self._dropout_rng(deterministic, dropout_rng))
    return self._head(y_BxTxD)

  def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
               encoder_segment_ids: jax.Array | None = None,
               decoder_segment_ids: jax.Array | None = None,
               encoder_positions: jax.Array | None = None,
               decoder_positions: jax.Array | None = None, *, deterministic: bool = True,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Float32 logits [B, T, V] of the decoder given encoder and (shifted) decoder inputs."""
    if encoder_segment_ids is None:
      encoder_segment_ids = (encoder_input_tokens != 0).astype(jnp.int32)
    enc_rng, dec_rng = layers.split_rng(dropout_rng, 2)
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          deterministic=deterministic, dropout_rng=enc_rng)
    return self.decode(encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids,
                       decoder_positions, deterministic=deterministic, dropout_rng=dec_rng)

  # -- incremental decoding -------------------------------------------------------------------

  def init_decode_cache(self, batch_size: int, max_length: int) -> DecodeCache:
    """Zeroed self-attention KV cache, one {"k", "v"} dict of [B, L, H, D_head] per layer."""
    shape = (batch_size, max_length, self.config.num_heads, self.config.head_dim)
    dtype = jnp.dtype(self.config.dtype)
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                 for _ in self.decoder.layers)

  def cross_attention_kv(self, encoded_BxSxD: jax.Array) -> CrossKV:
    """Cross-attention keys and values of the encoder output, computed once per decode."""
    return tuple(layer.encoder_decoder_attention.project_kv(encoded_BxSxD)
                 for layer in self.decoder.layers)

  def decode_step(self, token_B: jax.Array, position: jax.Array, cache: DecodeCache,
                  cross_kv: CrossKV,
                  encoder_segment_ids_BxS: jax.Array) -> tuple[jax.Array, DecodeCache]:
    """Logits [B, V] for decoder input `token_B` at scalar `position`, and the updated cache."""
    batch = token_B.shape[0]
    max_len = cache[0]["k"].shape[1]
    position = jnp.asarray(position, jnp.int32)
    q_positions_Bx1 = jnp.full((batch, 1), position, jnp.int32)
    k_positions_BxL = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32)[None, :],
                                       (batch, max_len))
    bias_BxHx1xL = self.decoder.relpos_bias(q_positions_Bx1, k_positions_BxL)
    y_Bx1xD = self._embed(token_B[:, None], q_positions_Bx1)
    new_cache = []
    for layer, layer_cache, layer_cross_kv in zip(self.decoder.layers, cache, cross_kv):
      y_Bx1xD, layer_cache = layer.step(y_Bx1xD, layer_cache, layer_cross_kv, position,
                                        encoder_segment_ids_BxS, bias_BxHx1xL)
      new_cache.append(layer_cache)
    logits_Bx1xV = self._head(self.decoder.decoder_norm(y_Bx1xD))
    return logits_Bx1xV[:, 0, :], tuple(new_cache)


def sinusoidal_positions(positions_BxL: jax.Array, features: int) -> jax.Array:
  """Fixed [B, L, features] embedding of integer positions: sines then cosines of geometric frequencies."""
  half = features // 2
  inv_freq_H = jnp.exp(-jnp.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxLxH = positions_BxL[..., None].astype(jnp.float32) * inv_freq_H[None, None, :]
  return jnp.concatenate([jnp.sin(angles_BxLxH), jnp.cos(angles_BxLxH)], axis=-1)


def _default_positions(tokens_BxL: jax.Array) -> jax.Array:
  length = tokens_BxL.shape[1]
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :], tokens_BxL.shape)


# -- t5x-style model interface -------------------------------------------------------------------

Batch = Mapping[str, jax.Array]


@gin.configurable
class EncoderDecoderModel:
  """What the trainer and evaluator call: init, loss_fn, score_batch, predict_batch."""
  feature_layout = "encoder_decoder"  # the packed rows the trainer builds (sft_jax.data.pipeline)

  def __init__(self, config: T5Config, *, eos_id: int = 1):
    self.config = config
    self.eos_id = eos_id

  def init(self, rng_seed: int) -> T5Transformer:
    """Builds the network with parameters drawn from `rng_seed` (sharded if a mesh is set)."""
    return T5Transformer(self.config, rngs=nnx.Rngs(params=rng_seed))

  def _logits(self, module: T5Transformer, batch: Batch,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    targets_BxT = batch["decoder_target_tokens"]
    # Unpacked batches: decoder_input_tokens start with 0 (T5's BOS is the pad id), so the
    # decoder's real positions are read off the targets.
    decoder_segment_ids = batch.get("decoder_segment_ids")
    if decoder_segment_ids is None:
      decoder_segment_ids = (targets_BxT != 0).astype(jnp.int32)
    return module(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                  encoder_segment_ids=batch.get("encoder_segment_ids"),
                  decoder_segment_ids=decoder_segment_ids,
                  encoder_positions=batch.get("encoder_positions"),
                  decoder_positions=batch.get("decoder_positions"),
                  deterministic=dropout_rng is None, dropout_rng=dropout_rng)

  def loss_fn(self, module: T5Transformer, batch: Batch, *, dropout_rng: jax.Array | None = None,
              label_smoothing: float = 0.0,
              z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (loss_sum, weight_sum, aux) over weighted target tokens; aux holds sums too."""
    return losses.target_token_loss(self._logits(module, batch, dropout_rng), batch["decoder_target_tokens"],
                                    losses.target_weights(batch), label_smoothing, z_loss)

  def score_batch(self, module: T5Transformer, batch: Batch) -> jax.Array:
    """Per-row sum of weighted target-token log-probabilities (natural log), [B]."""
    logits_BxTxV = self._logits(module, batch)
    return scoring.sequence_log_likelihood(
        logits_BxTxV, batch["decoder_target_tokens"], losses.target_weights(batch))

  def score_pairs(self, module: T5Transformer, prompts: Batch, first: Batch,
                  second: Batch) -> tuple[jax.Array, jax.Array]:
    """Per-row target log-likelihoods [B] of two targets per prompt (preference pairs).

    The prompt is encoded once and both targets are decoded against it: `prompts` holds the
    `encoder_*` features, `first` and `second` the `decoder_*` features of each side.
    """
    encoder_segment_ids = prompts.get("encoder_segment_ids")
    if encoder_segment_ids is None:
      encoder_segment_ids = (prompts["encoder_input_tokens"] != 0).astype(jnp.int32)
    encoded_BxSxD = module.encode(prompts["encoder_input_tokens"], encoder_segment_ids,
                                  prompts.get("encoder_positions"))

    def side(batch: Batch) -> jax.Array:
      segment_ids = batch.get("decoder_segment_ids")
      if segment_ids is None:
        segment_ids = (batch["decoder_target_tokens"] != 0).astype(jnp.int32)
      logits_BxTxV = module.decode(encoded_BxSxD, encoder_segment_ids, batch["decoder_input_tokens"],
                                   segment_ids, batch.get("decoder_positions"))
      return scoring.sequence_log_likelihood(logits_BxTxV, batch["decoder_target_tokens"],
                                             losses.target_weights(batch))

    return side(first), side(second)

  def score_choices(self, module: T5Transformer, batch: Batch) -> jax.Array:
    """Target log-likelihoods [R] of R choice rows against B prompts (rank classification).

    Each prompt is encoded once and every choice row decoded against its own prompt: the
    `encoder_*` features are [B, S], the `decoder_*` features [R, T] (laid out as `score_batch`
    reads them), and `choice_prompt_index` [R] names each row's prompt.
    """
    encoder_segment_ids = batch.get("encoder_segment_ids")
    if encoder_segment_ids is None:
      encoder_segment_ids = (batch["encoder_input_tokens"] != 0).astype(jnp.int32)
    encoded_BxSxD = module.encode(batch["encoder_input_tokens"], encoder_segment_ids, batch.get("encoder_positions"))
    index_R = batch["choice_prompt_index"]
    segment_ids = batch.get("decoder_segment_ids")
    if segment_ids is None:
      segment_ids = (batch["decoder_target_tokens"] != 0).astype(jnp.int32)
    logits_RxTxV = module.decode(jnp.take(encoded_BxSxD, index_R, axis=0), jnp.take(encoder_segment_ids, index_R, axis=0),
                                 batch["decoder_input_tokens"], segment_ids, batch.get("decoder_positions"))
    return scoring.sequence_log_likelihood(logits_RxTxV, batch["decoder_target_tokens"], losses.target_weights(batch))

  def predict_batch(self, module: T5Transformer, batch: Batch, max_decode_length: int,
                    decode_config: decoding.DecodeConfig | None = None,
                    rng: jax.Array | None = None) -> jax.Array:
    """Decodes [B, max_decode_length] int32; the end token is kept, positions after it are 0.

    `decode_config` picks greedy (the default), sampling (with `rng`) or beam search (best beam).
    """
    config = decoding.resolve_config(decode_config, max_decode_length, (self.eos_id,))
    tokens_BxT = decoding.encoder_decoder_generate(
        module, batch["encoder_input_tokens"], batch.get("encoder_segment_ids"),
        batch.get("encoder_positions"), config=config, rng=rng)
    return decoding.pad_to_length(tokens_BxT, max_decode_length)

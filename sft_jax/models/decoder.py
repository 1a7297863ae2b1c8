"""LLaMA-family decoder-only network (LLaMA 2/3, Mistral, Qwen2) and its t5x-style model interface.

Pre-norm RMSNorm residual blocks, rotary position embeddings (RoPE, the "rotate half" layout of
Hugging Face checkpoints), grouped-query attention (GQA: `num_kv_heads` key/value heads, each
shared by `num_heads // num_kv_heads` query heads), SwiGLU MLPs, an output head tied to the
embedding or its own. Qwen2 adds biases to the query/key/value projections (`attention_bias`).
Parameter names follow t5.py (`token_embedder`, `layers[i].self_attention.query` ...);
`sft_jax.models.hf_llama` maps them to and from Hugging Face names.

Packed rows: `decoder_segment_ids` keep examples from attending to each other and
`decoder_positions` restart at 0 per example, so RoPE sees each example as if it were alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from flax import nnx
import gin
import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.inference import decoding
from sft_jax.inference import scoring
from sft_jax.models import attention
from sft_jax.models import layers
from sft_jax.models import losses

# Per-layer KV cache {"k", "v"}: [B, max_len, G, D_head] each (G kv heads, not repeated).
DecodeCache = tuple[dict[str, jax.Array], ...]
ROPE_TYPES = ("default", "linear", "llama3")
# The keys each RoPE scaling type needs, named as in Hugging Face's `rope_scaling`.
_ROPE_KEYS = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Hyperparameters of a LLaMA-family decoder; the defaults are a tiny byte-level model."""
  vocab_size: int = 259  # seqio.ByteVocabulary: pad=0, eos=1, unk=2, bytes 3..258
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2  # == num_heads is plain multi-head attention, 1 is multi-query
  head_dim: int = 32
  d_ff: int = 384
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10_000.0
  # Hugging Face's `rope_scaling` as sorted (key, value) pairs, e.g. (("factor", 8.0),
  # ("high_freq_factor", 4.0), ("low_freq_factor", 1.0), ("original_max_position_embeddings",
  # 8192), ("rope_type", "llama3")); a dict is accepted and converted. Pairs rather than a dict
  # keep the config hashable (it is static in jit and in the nnx graph) and a gin literal, and
  # they carry HF's entries one to one whatever the scaling type needs. None: plain RoPE.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  tie_word_embeddings: bool = False
  attention_bias: bool = False  # biases on the q/k/v projections (Qwen2); never on the output
  mlp_activation: str = "silu"  # of the gated (SwiGLU) MLP, a name in layers.MLP_ACTIVATIONS
  # Mistral v0.1's attention window. Attention here is always full, so a sequence (or prompt plus
  # decoded tokens) longer than the window is refused rather than computed differently.
  sliding_window: int | None = None
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  remat_policy: str = "none"  # layers.REMAT_POLICIES

  def __post_init__(self):
    layers.check_remat_policy(self.remat_policy)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig: num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"DecoderConfig: RoPE needs an even head_dim, got {self.head_dim}")
    if self.mlp_activation not in layers.MLP_ACTIVATIONS:
      raise ValueError(f"DecoderConfig: mlp_activation={self.mlp_activation!r}; supported: "
                       f"{sorted(layers.MLP_ACTIVATIONS)}")
    if self.attention_impl not in attention.ATTENTION_IMPLS:
      raise ValueError(f"DecoderConfig: attention_impl={self.attention_impl!r}; expected one of "
                       f"{attention.ATTENTION_IMPLS}")
    object.__setattr__(self, "rope_scaling", normalize_rope_scaling(self.rope_scaling))


def normalize_rope_scaling(scaling: Mapping[str, Any] | Sequence[tuple[str, Any]] | None
                           ) -> tuple[tuple[str, Any], ...] | None:
  """Sorted (key, value) pairs of a HF `rope_scaling`, checked; None for plain RoPE."""
  if scaling is None:
    return None
  entries = dict(scaling)
  # Older configs say "type"; rope_theta has its own field.
  rope_type = entries.pop("rope_type", entries.pop("type", "default"))
  entries.pop("rope_theta", None)
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"DecoderConfig: rope_scaling type {rope_type!r} is not supported; supported: {ROPE_TYPES}")
  missing = [k for k in _ROPE_KEYS[rope_type] if k not in entries]
  if missing:
    raise ValueError(f"DecoderConfig: rope_scaling of type {rope_type!r} lacks {missing}")
  if rope_type == "default":
    return None
  return tuple(sorted({**entries, "rope_type": rope_type}.items()))


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: tuple[tuple[str, Any], ...] | None) -> np.ndarray:
  """Inverse frequencies [head_dim // 2] float32, as transformers' ROPE_INIT_FUNCTIONS compute them."""
  inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
  inv_freq = inv_freq.astype(np.float32)
  s = dict(scaling or ())
  if s.get("rope_type") == "linear":
    return (inv_freq / np.float32(s["factor"])).astype(np.float32)
  if s.get("rope_type") == "llama3":
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    factor, old_len = float(s["factor"]), float(s["original_max_position_embeddings"])
    low_wavelen = old_len / float(s["low_freq_factor"])
    high_wavelen = old_len / float(s["high_freq_factor"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - float(s["low_freq_factor"])) / (
        float(s["high_freq_factor"]) - float(s["low_freq_factor"]))
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


def rope_cos_sin(positions_BxL: jax.Array, inv_freq_K: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """float32 cos and sin [B, L, 2K] of per-token positions (each frequency twice, HF layout)."""
  angles_BxLxK = positions_BxL[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_K)[None, None, :]
  angles_BxLx2K = jnp.concatenate([angles_BxLxK, angles_BxLxK], axis=-1)
  return jnp.cos(angles_BxLx2K), jnp.sin(angles_BxLx2K)


def apply_rope(x_BxLxHxD: jax.Array, cos_BxLxD: jax.Array, sin_BxLxD: jax.Array) -> jax.Array:
  """Rotates each head's (i, i + D/2) feature pairs by position-dependent angles, in float32."""
  x = x_BxLxHxD.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_BxLxD[:, :, None, :] + rotated * sin_BxLxD[:, :, None, :]
  return out.astype(x_BxLxHxD.dtype)


def _common_kwargs(config: DecoderConfig, rngs: nnx.Rngs) -> dict[str, Any]:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)


def _norm(config: DecoderConfig) -> layers.RMSNorm:
  return layers.RMSNorm(config.d_model, epsilon=config.rms_norm_eps, dtype=jnp.dtype(config.dtype),
                        param_dtype=jnp.dtype(config.param_dtype))


class DenseWithBias(layers.DenseGeneral):
  """DenseGeneral plus a bias over its output axes (Qwen2's query/key/value projections)."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], axis_names: layers.LogicalAxes,
               *, dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_shape, out_shape, axis_names, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bias = layers.logical_param(jnp.zeros(tuple(out_shape), param_dtype), axis_names[len(in_shape):])

  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.bias[...].astype(self.dtype)
    out = super().__call__(x)
    return out + bias.reshape((1,) * (out.ndim - bias.ndim) + bias.shape)


class Attention(nnx.Module):
  """Causal GQA self-attention with RoPE; q/k/v projections exposed for the KV cache."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    self.dropout_rate = config.dropout_rate
    self.attention_impl = config.attention_impl
    self.head_dim = config.head_dim
    self.group = config.num_heads // config.num_kv_heads
    kw = _common_kwargs(config, rngs)
    dense = DenseWithBias if config.attention_bias else layers.DenseGeneral
    d, h, g, k = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
    self.query = dense((d,), (h, k), ("embed", "heads", "kv"), **kw)
    # Key/value heads get their own logical name: there may be fewer of them than devices on the
    # axis the query heads are split over.
    self.key = dense((d,), (g, k), ("embed", "kv_heads", "kv"), **kw)
    self.value = dense((d,), (g, k), ("embed", "kv_heads", "kv"), **kw)
    self.out = layers.DenseGeneral((h, k), (d,), ("heads", "kv", "embed"), **kw)

  def project(self, x_BxLxD: jax.Array, cos_BxLxK: jax.Array,
              sin_BxLxK: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rotated, pre-scaled queries [B, L, H, D_head] and rotated keys, values [B, L, G, D_head]."""
    q_BxLxHxK = apply_rope(self.query(x_BxLxD), cos_BxLxK, sin_BxLxK)
    k_BxLxGxK = apply_rope(self.key(x_BxLxD), cos_BxLxK, sin_BxLxK)
    # attention.dot_product_attention is unscaled (T5); 1/sqrt(D_head) goes on the queries.
    q_BxLxHxK = q_BxLxHxK * jnp.asarray(self.head_dim ** -0.5, q_BxLxHxK.dtype)
    return q_BxLxHxK, k_BxLxGxK, self.value(x_BxLxD)

  def attend(self, q_BxQxHxK: jax.Array, k_BxKxGxK: jax.Array, v_BxKxGxK: jax.Array, *,
             q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxK: jax.Array, causal: bool,
             dropout_rng: jax.Array | None = None, impl: str | None = None) -> jax.Array:
    """Output [B, Q, D] of queries attending to keys/values of their own segment."""
    impl = impl or self.attention_impl
    if impl == "xla" and self.group > 1:
      # The einsum reference wants one key head per query head; cudnn and pallas take GQA as is.
      k_BxKxGxK = jnp.repeat(k_BxKxGxK, self.group, axis=2)
      v_BxKxGxK = jnp.repeat(v_BxKxGxK, self.group, axis=2)
    out_BxQxHxK = attention.dot_product_attention(
        q_BxQxHxK, k_BxKxGxK, v_BxKxGxK, q_segment_ids_BxQ=q_segment_ids_BxQ,
        kv_segment_ids_BxK=kv_segment_ids_BxK, causal=causal, dropout_rate=self.dropout_rate,
        dropout_rng=dropout_rng, impl=impl)
    return self.out(out_BxQxHxK)


class DecoderLayer(nnx.Module):
  """Causal self-attention block then SwiGLU MLP block, each pre-normed with a residual."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    self.dropout_rate = config.dropout_rate
    self.pre_self_attention_layer_norm = _norm(config)
    self.self_attention = Attention(config, rngs=rngs)
    self.pre_mlp_layer_norm = _norm(config)
    self.mlp = layers.Mlp(config.d_model, config.d_ff, activation=config.mlp_activation, gated=True,
                          dropout_rate=config.dropout_rate, **_common_kwargs(config, rngs))

  def _mlp_block(self, x_BxLxD: jax.Array, rngs: Sequence[jax.Array | None]) -> jax.Array:
    h_BxLxD = self.mlp(self.pre_mlp_layer_norm(x_BxLxD), dropout_rng=rngs[0])
    return x_BxLxD + layers.dropout(h_BxLxD, self.dropout_rate, rngs[1])

  def forward(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array, cos_BxLxK: jax.Array,
              sin_BxLxK: jax.Array, dropout_rng: jax.Array | None
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(layer output, keys, values) of a whole sequence; the keys/values seed a KV cache."""
    rngs = layers.split_rng(dropout_rng, 4)
    q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = self.self_attention.project(
        self.pre_self_attention_layer_norm(x_BxLxD), cos_BxLxK, sin_BxLxK)
    h_BxLxD = self.self_attention.attend(
        q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, q_segment_ids_BxQ=segment_ids_BxL,
        kv_segment_ids_BxK=segment_ids_BxL, causal=True, dropout_rng=rngs[0])
    x_BxLxD = x_BxLxD + layers.dropout(h_BxLxD, self.dropout_rate, rngs[1])
    return self._mlp_block(x_BxLxD, rngs[2:]), k_BxLxGxK, v_BxLxGxK

  def __call__(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array, cos_BxLxK: jax.Array,
               sin_BxLxK: jax.Array, dropout_rng: jax.Array | None) -> jax.Array:
    return self.forward(x_BxLxD, segment_ids_BxL, cos_BxLxK, sin_BxLxK, dropout_rng)[0]

  def step(self, x_Bx1xD: jax.Array, cache: dict[str, jax.Array], index: jax.Array,
           kv_valid_BxL: jax.Array, cos_Bx1xK: jax.Array,
           sin_Bx1xK: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One new token: writes its key/value into cache slot `index`, attends to the valid slots."""
    q_Bx1xHxK, k_Bx1xGxK, v_Bx1xGxK = self.self_attention.project(
        self.pre_self_attention_layer_norm(x_Bx1xD), cos_Bx1xK, sin_Bx1xK)
    slot = (0, index, 0, 0)
    k_BxLxGxK = jax.lax.dynamic_update_slice(cache["k"], k_Bx1xGxK.astype(cache["k"].dtype), slot)
    v_BxLxGxK = jax.lax.dynamic_update_slice(cache["v"], v_Bx1xGxK.astype(cache["v"].dtype), slot)
    # Causality and prompt padding are both in `kv_valid_BxL`; a single query has no tiles, so xla.
    h_Bx1xD = self.self_attention.attend(
        q_Bx1xHxK, k_BxLxGxK, v_BxLxGxK, q_segment_ids_BxQ=jnp.ones((x_Bx1xD.shape[0], 1), jnp.int32),
        kv_segment_ids_BxK=kv_valid_BxL, causal=False, impl="xla")
    return self._mlp_block(x_Bx1xD + h_Bx1xD, [None, None]), {"k": k_BxLxGxK, "v": v_BxLxGxK}


class DecoderTransformer(nnx.Module):
  """Embedding, decoder layers, final norm and head; `prefill`/`decode_step` use a KV cache."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    kw = _common_kwargs(config, rngs)
    self.token_embedder = layers.Embed(config.vocab_size, config.d_model, **kw)
    if config.tie_word_embeddings:
      # The tied head reads logits off this table: unit-variance rows would give logits of std
      # sqrt(d_model) at initialization.
      table = self.token_embedder.embedding
      table.value = table[...] * jnp.asarray(config.d_model ** -0.5, table[...].dtype)
    self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
    self.decoder_norm = _norm(config)
    if not config.tie_word_embeddings:
      self.logits_dense = layers.DenseGeneral((config.d_model,), (config.vocab_size,),
                                              ("embed", "vocab"), **kw)

  def _inv_freq(self) -> np.ndarray:
    return rope_inv_freq(self.config.head_dim, self.config.rope_theta, self.config.rope_scaling)

  def _head(self, y_BxLxD: jax.Array) -> jax.Array:
    """float32 logits of final-normed outputs."""
    if self.config.tie_word_embeddings:
      logits_BxLxV = self.token_embedder.attend(y_BxLxD)
    else:
      logits_BxLxV = self.logits_dense(y_BxLxD)
    return layers.constrain(logits_BxLxV.astype(jnp.float32), layers.LOGITS_AXES)

  def _check_window(self, length: int) -> None:
    window = self.config.sliding_window
    if window is not None and length > window:
      raise ValueError(f"sequence of {length} tokens exceeds sliding_window={window}; sliding-window "
                       f"attention is not implemented")

  def _dropout_rng(self, deterministic: bool, dropout_rng: jax.Array | None) -> jax.Array | None:
    if deterministic or self.config.dropout_rate == 0.0:
      return None
    if dropout_rng is None:
      raise ValueError("deterministic=False with dropout_rate > 0 needs a dropout_rng.")
    return dropout_rng

  def _layers(self, tokens_BxL, segment_ids_BxL, positions_BxL, dropout_rng, keep_kv=False):
    """Final-normed outputs [B, L, D], and per-layer (keys, values) if `keep_kv`."""
    self._check_window(tokens_BxL.shape[1])
    cos_BxLxK, sin_BxLxK = rope_cos_sin(positions_BxL, self._inv_freq())
    rngs = layers.split_rng(dropout_rng, len(self.layers) + 1)
    x_BxLxD = layers.dropout(self.token_embedder(tokens_BxL), self.config.dropout_rate, rngs[0])
    kv = []
    for layer, rng in zip(self.layers, rngs[1:]):
      if keep_kv:  # decoding has no backward pass: nothing to rematerialize
        x_BxLxD, k_BxLxGxK, v_BxLxGxK = layer.forward(x_BxLxD, segment_ids_BxL, cos_BxLxK, sin_BxLxK, rng)
        kv.append((k_BxLxGxK, v_BxLxGxK))
      else:
        x_BxLxD = layers.call_layer(layer, x_BxLxD, segment_ids_BxL, cos_BxLxK, sin_BxLxK, rng,
                                    remat_policy=self.config.remat_policy)
    return self.decoder_norm(x_BxLxD), kv

  def __call__(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array | None = None,
               positions_BxL: jax.Array | None = None, *, deterministic: bool = True,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """float32 logits [B, L, V]; segment ids default to one segment, positions to arange."""
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones(tokens_BxL.shape, jnp.int32)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
    y_BxLxD, _ = self._layers(tokens_BxL, segment_ids_BxL, positions_BxL,
                              self._dropout_rng(deterministic, dropout_rng))
    return self._head(y_BxLxD)

  # -- incremental decoding -------------------------------------------------------------------

  def prefill(self, prompt_BxP: jax.Array, segment_ids_BxP: jax.Array, positions_BxP: jax.Array,
              max_length: int) -> tuple[jax.Array, DecodeCache]:
    """Logits [B, V] after the last prompt slot, and a cache of `max_length` slots holding the prompt."""
    self._check_window(max_length)
    y_BxPxD, kv = self._layers(prompt_BxP, segment_ids_BxP, positions_BxP, None, keep_kv=True)
    dtype = jnp.dtype(self.config.dtype)
    pad = ((0, 0), (0, max_length - prompt_BxP.shape[1]), (0, 0), (0, 0))
    cache = tuple({"k": jnp.pad(k.astype(dtype), pad), "v": jnp.pad(v.astype(dtype), pad)} for k, v in kv)
    return self._head(y_BxPxD[:, -1:, :])[:, 0, :], cache

  def decode_step(self, token_B: jax.Array, index: jax.Array, position_B: jax.Array,
                  cache: DecodeCache, kv_valid_BxL: jax.Array) -> tuple[jax.Array, DecodeCache]:
    """Logits [B, V] after `token_B` written at cache slot `index` with RoPE position `position_B`."""
    cos_Bx1xK, sin_Bx1xK = rope_cos_sin(position_B[:, None], self._inv_freq())
    x_Bx1xD = self.token_embedder(token_B[:, None])
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      x_Bx1xD, layer_cache = layer.step(x_Bx1xD, layer_cache, index, kv_valid_BxL, cos_Bx1xK, sin_Bx1xK)
      new_cache.append(layer_cache)
    return self._head(self.decoder_norm(x_Bx1xD))[:, 0, :], tuple(new_cache)


# -- t5x-style model interface -------------------------------------------------------------------

Batch = Mapping[str, jax.Array]


def pairs_to_decoder_only(batch: Batch, bos_id: int | None = None) -> dict[str, jax.Array]:
  """The decoder-only layout of an (inputs, targets) batch as evaluators build for encoder-decoders.

  Each row becomes its left-aligned input followed by its targets, after a `bos_id` column when
  one is given (its padding, between BOS and the input, is masked by segment id); loss weights
  mark the targets, so the sums of `score_batch` cover exactly the target tokens.
  """
  inputs_BxS, targets_BxT = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
  input_mask = batch.get("encoder_segment_ids")
  inputs_BxS, input_mask_BxS = decoding.left_align(
      inputs_BxS, inputs_BxS != 0 if input_mask is None else input_mask)
  if bos_id is not None:
    ones_Bx1 = jnp.ones((inputs_BxS.shape[0], 1), jnp.int32)
    inputs_BxS = jnp.concatenate([ones_Bx1 * bos_id, inputs_BxS.astype(jnp.int32)], axis=1)
    input_mask_BxS = jnp.concatenate([ones_Bx1, input_mask_BxS], axis=1)
  weights_BxT = losses.target_weights(batch)
  tokens_BxL = jnp.concatenate([inputs_BxS, targets_BxT], axis=1)
  segment_ids_BxL = jnp.concatenate([input_mask_BxS, jnp.ones(targets_BxT.shape, jnp.int32)], axis=1)
  # Position t predicts token t + 1: inputs are the sequence minus its last token.
  segment_ids_BxL = segment_ids_BxL[:, :-1]
  zeros_BxS = jnp.zeros(inputs_BxS.shape, jnp.float32)
  return {"decoder_input_tokens": tokens_BxL[:, :-1], "decoder_target_tokens": tokens_BxL[:, 1:],
          "decoder_segment_ids": segment_ids_BxL,
          "decoder_positions": jnp.maximum(jnp.cumsum(segment_ids_BxL, axis=1) - 1, 0),
          "decoder_loss_weights": jnp.concatenate([zeros_BxS[:, 1:], weights_BxT], axis=1)}


@gin.configurable
class DecoderOnlyModel:
  """What the trainer and evaluator call: init, loss_fn, score_batch, predict_batch.

  Batches use seqio's decoder-only features: `decoder_input_tokens`, `decoder_target_tokens`
  (the inputs shifted by one), `decoder_segment_ids`, `decoder_positions` and
  `decoder_loss_weights` (1 on target tokens only). `score_batch` and `predict_batch` also take
  the encoder-decoder layout (`encoder_input_tokens` as the prompt) that evaluators build.

  `bos_id` is each example's first decoder input (its start token): 0, seqio's shift-right
  convention, for models trained from scratch; a Hugging Face LLaMA/Mistral import uses its own
  BOS (config.json's bos_token_id, e.g. Llama 3's 128000), as its tokenizer and pretraining do;
  None means no start token: the row begins with the prompt's first token, which is never
  predicted (Qwen2, whose tokenizer adds no BOS). Scores then equal transformers' on
  `[BOS] + prompt + target` (or `prompt + target` without BOS). See `hf_llama.start_token_from_hf`.
  The trainer's packer, the evaluator's rows and `tools/score.py` all follow it.
  """
  feature_layout = "decoder_only"  # the packed rows the trainer builds (sft_jax.data.pipeline)

  def __init__(self, config: DecoderConfig, *, eos_id: int | Sequence[int] = 1, bos_id: int | None = 0):
    self.config = config
    self.eos_id = eos_id
    self.bos_id = bos_id
    self.eos_ids = (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)

  def init(self, rng_seed: int) -> DecoderTransformer:
    """Builds the network with parameters drawn from `rng_seed` (sharded if a mesh is set)."""
    return DecoderTransformer(self.config, rngs=nnx.Rngs(params=rng_seed))

  def _logits(self, module: DecoderTransformer, batch: Batch,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    # Without segment ids a row is one sequence: trailing padding is harmless under the causal mask.
    return module(batch["decoder_input_tokens"], batch.get("decoder_segment_ids"),
                  batch.get("decoder_positions"), deterministic=dropout_rng is None,
                  dropout_rng=dropout_rng)

  def loss_fn(self, module: DecoderTransformer, batch: Batch, *, dropout_rng: jax.Array | None = None,
              label_smoothing: float = 0.0,
              z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (loss_sum, weight_sum, aux) over weighted target tokens; aux holds sums too."""
    return losses.target_token_loss(self._logits(module, batch, dropout_rng), batch["decoder_target_tokens"],
                                    losses.target_weights(batch), label_smoothing, z_loss)

  def score_batch(self, module: DecoderTransformer, batch: Batch) -> jax.Array:
    """Per-row sum of weighted target-token log-probabilities (natural log), [B]."""
    if "encoder_input_tokens" in batch:
      # seqio's 0 start token was never added to these rows; keep them as they were.
      batch = pairs_to_decoder_only(batch, self.bos_id or None)
    return scoring.sequence_log_likelihood(
        self._logits(module, batch), batch["decoder_target_tokens"], losses.target_weights(batch))

  def score_pairs(self, module: DecoderTransformer, prompts: Batch, first: Batch,
                  second: Batch) -> tuple[jax.Array, jax.Array]:
    """Per-row target log-likelihoods [B] of two targets per prompt (preference pairs).

    `prompts` holds the `encoder_*` (prompt) features, `first` and `second` the `decoder_*`
    target features of each side; both sides run as one batch of 2B rows, each row the prompt
    followed by its target (a causal model reads the prompt again for every continuation).
    """
    rows = {**{k: jnp.concatenate([v, v]) for k, v in prompts.items()},
            **{k: jnp.concatenate([first[k], second[k]]) for k in first}}
    scores_2B = self.score_batch(module, rows)
    half = scores_2B.shape[0] // 2
    return scores_2B[:half], scores_2B[half:]

  def predict_batch(self, module: DecoderTransformer, batch: Batch, max_decode_length: int,
                    decode_config: decoding.DecodeConfig | None = None,
                    rng: jax.Array | None = None) -> jax.Array:
    """Continuations [B, max_decode_length] int32 of the prompts; the end token is kept, 0 after it.

    The prompt is `decoder_input_tokens` (or `encoder_input_tokens`), padded left or right;
    its real tokens are those with a non-zero segment id, or without segment ids the non-zero ones.
    `decode_config` picks greedy (the default), sampling (with `rng`) or beam search (best beam).
    """
    key = "encoder_input_tokens" if "encoder_input_tokens" in batch else "decoder_input_tokens"
    prompt_BxP = batch[key]
    mask_BxP = batch.get(key.replace("input_tokens", "segment_ids"))
    if mask_BxP is None:
      mask_BxP = prompt_BxP != 0
    config = decoding.resolve_config(decode_config, max_decode_length, self.eos_ids)
    tokens_BxT = decoding.decoder_only_generate(module, prompt_BxP, mask_BxP, config=config, rng=rng)
    return decoding.pad_to_length(tokens_BxT, max_decode_length)

"""Batched decoding for both model families: greedy, temperature/top-k/top-p sampling, beam search.

One loop serves encoder-decoders (T5) and decoder-only LMs (the LLaMA family). A family adapter
(`encoder_decoder_generate`, `decoder_only_generate`) builds a preallocated KV cache and a step
function `step_fn(token_N, step, cache) -> (logits_NxV, cache)`; `generate` runs the chosen
strategy in a `lax.while_loop`. Everything is a pure function of the network's parameters and
the inputs (caches are plain arrays threaded through the loop), so it runs under `jax.jit` after
`nnx.split`/`nnx.merge`, compiles once per shape and `DecodeConfig`, and never mutates NNX state.

Outputs are [B, max_new_tokens] int32: a row's end token (an EOS id, or the last token of a
matched stop sequence) is kept and every later position is 0.

Beam search follows Hugging Face `generate(num_beams=K, do_sample=False)` step for step (its
vectorized `_beam_search` of transformers 5): per row it keeps the best `max(2, 1 + #eos) * K`
continuations of all beams, continues the best K that did not end, and adds those of the best
K that did end to a pool of K finished hypotheses scored `sum_logprobs / length ** length_penalty`
(length = generated tokens, end token included). Reaching `max_new_tokens` ends every beam.
`early_stopping`, as in Hugging Face:
  False    stop a row once its best running beam, scored at the current length, cannot beat
           the worst of its K finished hypotheses (the default; a heuristic when
           length_penalty > 0 rewards length);
  True     stop a row as soon as it has K finished hypotheses;
  "never"  stop a row only when no running beam can beat them, its best running beam scored
           at max_new_tokens when length_penalty > 0 (canonical beam search).
The best finished hypothesis of each row is returned.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

DECODE_METHODS = ("greedy", "sample", "beam")
# Hugging Face's "minus infinity" for scores of candidates that must not be picked; the same
# finite value keeps beam search's ties and roundings identical to transformers'.
_NEG = -1.0e9

# step_fn(token_N, step, cache) -> (logits [N, V] for generated position `step`, cache), where
# token_N is the token generated at `step - 1`.
StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode; hashable, so it is static under `jax.jit`.

  `max_new_tokens=None` and `eos_ids=None` take the caller's values (a model's `predict_batch`
  length and end tokens); `eos_ids=()` means no end token. `top_k=0` and `top_p=1.0` switch the
  filters off; `temperature=0.0` samples greedily; the three apply to method="sample" only (beam
  search is deterministic, as `generate(num_beams=K, do_sample=False)`). `stop_sequences` are
  token-id sequences: a row ends when its generated tokens end with one of them (the sequence
  stays in the output).
  """
  method: str = "greedy"
  max_new_tokens: int | None = None
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  length_penalty: float = 1.0
  early_stopping: bool | str = False
  eos_ids: tuple[int, ...] | None = None
  stop_sequences: tuple[tuple[int, ...], ...] = ()

  def __post_init__(self):
    if self.method not in DECODE_METHODS:
      raise ValueError(f"DecodeConfig: method={self.method!r}; expected one of {DECODE_METHODS}")
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"DecodeConfig: max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.temperature < 0.0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"DecodeConfig: need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
                       f"{self.temperature}, {self.top_k}, {self.top_p}")
    if self.num_beams < 1:
      raise ValueError(f"DecodeConfig: num_beams={self.num_beams} must be >= 1")
    if self.early_stopping not in (True, False, "never"):
      raise ValueError(f"DecodeConfig: early_stopping={self.early_stopping!r}; expected True, False "
                       f"or 'never'")
    if self.eos_ids is not None:
      object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
    stops = tuple(tuple(int(t) for t in seq) for seq in self.stop_sequences)
    if any(len(seq) == 0 for seq in stops):
      raise ValueError("DecodeConfig: a stop sequence is empty")
    object.__setattr__(self, "stop_sequences", stops)

  @property
  def rows_per_example(self) -> int:
    """Decoded rows per input row: `num_beams` for beam search, else 1."""
    return self.num_beams if self.method == "beam" else 1


def resolve_config(config: DecodeConfig | None, max_decode_length: int,
                   eos_ids: tuple[int, ...]) -> DecodeConfig:
  """`config` (greedy by default) with its unset length and end tokens taken from the caller."""
  config = config or DecodeConfig()
  if config.max_new_tokens is not None and config.max_new_tokens > max_decode_length:
    raise ValueError(f"DecodeConfig.max_new_tokens={config.max_new_tokens} exceeds the output length "
                     f"max_decode_length={max_decode_length}")
  return dataclasses.replace(
      config, max_new_tokens=config.max_new_tokens or max_decode_length,
      eos_ids=tuple(eos_ids) if config.eos_ids is None else config.eos_ids)


def pad_to_length(tokens_BxT: jax.Array, length: int) -> jax.Array:
  """`tokens_BxT` with zero columns appended up to `length`."""
  return jnp.pad(tokens_BxT, ((0, 0), (0, length - tokens_BxT.shape[1])))


# -- token selection -----------------------------------------------------------------------------

def filter_logits(logits_BxV: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Logits divided by `temperature`, then all but the top-k, then all but the top-p mass set to -inf.

  The order is Hugging Face's warpers': top-k keeps every token tied with the k-th, top-p keeps
  the smallest set of most likely tokens whose probability reaches `top_p` (at least one), plus
  any tokens tied with the least likely of that set (transformers splits such ties by sort order).
  """
  logits_BxV = logits_BxV.astype(jnp.float32) / jnp.float32(temperature)
  vocab = logits_BxV.shape[-1]
  if 0 < top_k < vocab:
    kth_B = jax.lax.top_k(logits_BxV, top_k)[0][:, -1]
    logits_BxV = jnp.where(logits_BxV < kth_B[:, None], -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_B = jnp.maximum(jnp.sum(mass_before_BxV < top_p, axis=-1), 1)
    cutoff_B = jnp.take_along_axis(sorted_BxV, (kept_B - 1)[:, None], axis=-1)[:, 0]
    logits_BxV = jnp.where(logits_BxV < cutoff_B[:, None], -jnp.inf, logits_BxV)
  return logits_BxV


def _select(logits_BxV: jax.Array, config: DecodeConfig, rng: jax.Array | None,
            step: jax.Array) -> jax.Array:
  """The next token of each row: argmax, or a draw from the filtered distribution."""
  if config.method == "greedy" or config.temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  filtered_BxV = filter_logits(logits_BxV, temperature=config.temperature, top_k=config.top_k,
                               top_p=config.top_p)
  # One key per step: the same key gives the same tokens whatever the loop's trip count.
  return jax.random.categorical(jax.random.fold_in(rng, step), filtered_BxV, axis=-1).astype(jnp.int32)


def _ends(token_N: jax.Array, out_NxT: jax.Array, step: jax.Array,
          config: DecodeConfig) -> jax.Array:
  """Whether each row ends at `step`: an EOS id, or its generated tokens end with a stop sequence."""
  eos_E = jnp.asarray(config.eos_ids, jnp.int32)
  ended_N = jnp.any(token_N[:, None] == eos_E[None, :], axis=1)
  for sequence in config.stop_sequences:
    length = len(sequence)
    if length > out_NxT.shape[1]:
      continue  # longer than the output: it can never match
    window_NxL = jax.lax.dynamic_slice_in_dim(out_NxT, jnp.maximum(step - length + 1, 0), length, axis=1)
    matches_N = jnp.all(window_NxL == jnp.asarray(sequence, jnp.int32)[None, :], axis=1)
    ended_N = ended_N | ((step + 1 >= length) & matches_N)
  return ended_N


# -- the decoding loops --------------------------------------------------------------------------

def generate(first_logits_NxV: jax.Array, cache: Any, step_fn: StepFn, config: DecodeConfig,
             rng: jax.Array | None = None) -> jax.Array:
  """Decodes [B, max_new_tokens] int32 from the logits of the first generated position.

  N = B rows for greedy and sampling; for beam search N = B * num_beams, row b * num_beams + k
  holding beam k of example b (all beams of a row start identical), and every leaf of `cache`
  has the N rows first so that it can be reordered by beam.
  """
  if config.max_new_tokens is None or config.eos_ids is None:
    raise ValueError("generate: resolve max_new_tokens and eos_ids first (decoding.resolve_config)")
  if config.method == "sample" and config.temperature > 0.0 and rng is None:
    raise ValueError("generate: method='sample' needs an rng key")
  if config.method == "beam":
    return _beam_search(first_logits_NxV, cache, step_fn, config)
  return _sample_loop(first_logits_NxV, cache, step_fn, config, rng)


def _sample_loop(first_logits_BxV: jax.Array, cache: Any, step_fn: StepFn, config: DecodeConfig,
                 rng: jax.Array | None) -> jax.Array:
  """Greedy or sampled decoding; stops when every row has ended or max_new_tokens are out."""
  batch, length = first_logits_BxV.shape[0], config.max_new_tokens

  def emit(step, logits_BxV, out_BxT, done_B):
    token_B = jnp.where(done_B, 0, _select(logits_BxV, config, rng, step))
    out_BxT = jax.lax.dynamic_update_slice(out_BxT, token_B[:, None], (0, step))
    return token_B, out_BxT, done_B | _ends(token_B, out_BxT, step, config)

  def cond_fn(carry):
    step, _, _, _, done_B = carry
    return (step < length) & ~jnp.all(done_B)

  def body_fn(carry):
    step, token_B, cache, out_BxT, done_B = carry
    logits_BxV, cache = step_fn(token_B, step, cache)
    token_B, out_BxT, done_B = emit(step, logits_BxV, out_BxT, done_B)
    return step + 1, token_B, cache, out_BxT, done_B

  zero = jnp.asarray(0, jnp.int32)
  token_B, out_BxT, done_B = emit(zero, first_logits_BxV, jnp.zeros((batch, length), jnp.int32),
                                  jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond_fn, body_fn, (zero + 1, token_B, cache, out_BxT, done_B))[3]


class _Beams(NamedTuple):
  """Beam search state of B rows with K beams and C = max(2, 1 + #eos) * K candidates."""
  running_BxKxT: jax.Array  # generated tokens of the live beams
  running_scores_BxK: jax.Array  # their summed log-probabilities, best first
  finished_BxKxT: jax.Array  # the best K ended hypotheses so far
  finished_scores_BxK: jax.Array  # their length-penalized scores, best first
  is_finished_BxK: jax.Array  # which finished slots hold a hypothesis
  improvable_B: jax.Array  # per row: a running beam may still beat a finished hypothesis
  active: jax.Array  # scalar bool: whether the loop goes on


def _take_beams(x_BxCx: jax.Array, index_BxK: jax.Array) -> jax.Array:
  """x[b, index[b, k], ...] for every row b and beam k."""
  index = index_BxK.reshape(index_BxK.shape + (1,) * (x_BxCx.ndim - 2))
  return jnp.take_along_axis(x_BxCx, index, axis=1)


def _beam_search(first_logits_NxV: jax.Array, cache: Any, step_fn: StepFn,
                 config: DecodeConfig) -> jax.Array:
  """Hugging Face's beam search (see the module docstring); the best hypothesis per row."""
  beams, length = config.num_beams, config.max_new_tokens
  rows, vocab = first_logits_NxV.shape
  batch = rows // beams
  candidates = max(2, 1 + len(config.eos_ids)) * beams
  # length ** length_penalty per length 1..T, in float64 then float32, as transformers divides.
  penalty_T = jnp.asarray(np.arange(1, length + 1, dtype=np.float64) ** config.length_penalty, jnp.float32)
  top_beams_C = jnp.arange(candidates) < beams  # only the best K candidates may finish
  row_offset_Bx1 = (jnp.arange(batch, dtype=jnp.int32) * beams)[:, None]

  def select(step, logits_NxV, state, cache):
    log_probs_BxKxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1).reshape(batch, beams, vocab)
    log_probs_BxKV = (log_probs_BxKxV + state.running_scores_BxK[:, :, None]).reshape(batch, beams * vocab)
    top_scores_BxC, top_index_BxC = jax.lax.top_k(log_probs_BxKV, candidates)
    source_BxC, token_BxC = top_index_BxC // vocab, (top_index_BxC % vocab).astype(jnp.int32)
    at_step_T = jnp.arange(length) == step
    seqs_BxCxT = jnp.where(at_step_T[None, None, :], token_BxC[:, :, None],
                           _take_beams(state.running_BxKxT, source_BxC))
    ended_BxC = _ends(token_BxC.reshape(-1), seqs_BxCxT.reshape(batch * candidates, length), step,
                      config).reshape(batch, candidates) | (step + 1 >= length)

    # The best K candidates that did not end go on.
    live_scores_BxC = top_scores_BxC + ended_BxC.astype(jnp.float32) * _NEG
    running_scores_BxK, pick_BxK = jax.lax.top_k(live_scores_BxC, beams)
    running_BxKxT = _take_beams(seqs_BxCxT, pick_BxK)
    token_N = _take_beams(token_BxC, pick_BxK).reshape(rows)
    source_N = (_take_beams(source_BxC, pick_BxK) + row_offset_Bx1).reshape(rows)

    # Those of the best K that ended join the finished pool if they beat its worst.
    just_ended_BxC = ended_BxC & top_beams_C[None, :]
    ended_scores_BxC = top_scores_BxC / penalty_T[step]
    full_B = jnp.all(state.is_finished_BxK, axis=1) & (config.early_stopping is True)
    ended_scores_BxC = ended_scores_BxC + full_B[:, None].astype(jnp.float32) * _NEG
    ended_scores_BxC = ended_scores_BxC + (~state.improvable_B)[:, None].astype(jnp.float32) * _NEG
    ended_scores_BxC = ended_scores_BxC + (~just_ended_BxC).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([state.finished_scores_BxK, ended_scores_BxC], axis=1)
    finished_scores_BxK, keep_BxK = jax.lax.top_k(merged_scores, beams)
    finished_BxKxT = _take_beams(jnp.concatenate([state.finished_BxKxT, seqs_BxCxT], axis=1), keep_BxK)
    is_finished_BxK = _take_beams(jnp.concatenate([state.is_finished_BxK, just_ended_BxC], axis=1), keep_BxK)

    # Can the best running beam still beat the worst finished hypothesis?
    if config.early_stopping == "never" and config.length_penalty > 0.0:
      best_length = length
    else:
      best_length = step + 1
    best_running_B = running_scores_BxK[:, 0] / penalty_T[best_length - 1]
    worst_finished_BxK = jnp.where(is_finished_BxK, jnp.min(finished_scores_BxK, axis=1, keepdims=True), _NEG)
    improvable_B = state.improvable_B & jnp.any(best_running_B[:, None] > worst_finished_BxK, axis=1)
    active = ((step + 1 < length) & jnp.any(improvable_B) & ~jnp.all(ended_BxC)
              & ~(jnp.all(is_finished_BxK) & (config.early_stopping is True)))
    state = _Beams(running_BxKxT, running_scores_BxK, finished_BxKxT, finished_scores_BxK,
                   is_finished_BxK, improvable_B, active)
    cache = jax.tree.map(lambda x: jnp.take(x, source_N, axis=0), cache)
    return state, token_N, cache

  def cond_fn(carry):
    return carry[3].active

  def body_fn(carry):
    step, token_N, cache, state = carry
    logits_NxV, cache = step_fn(token_N, step + 1, cache)
    state, token_N, cache = select(step + 1, logits_NxV, state, cache)
    return step + 1, token_N, cache, state

  # Only beam 0 of each row is live at first: its copies would pick the same tokens.
  first_scores_K = jnp.where(jnp.arange(beams) == 0, 0.0, _NEG).astype(jnp.float32)
  init = _Beams(
      running_BxKxT=jnp.zeros((batch, beams, length), jnp.int32),
      running_scores_BxK=jnp.broadcast_to(first_scores_K[None, :], (batch, beams)),
      finished_BxKxT=jnp.zeros((batch, beams, length), jnp.int32),
      finished_scores_BxK=jnp.full((batch, beams), _NEG, jnp.float32),
      is_finished_BxK=jnp.zeros((batch, beams), bool),
      improvable_B=jnp.ones((batch,), bool), active=jnp.asarray(True))
  zero = jnp.asarray(0, jnp.int32)
  state, token_N, cache = select(zero, first_logits_NxV, init, cache)
  state = jax.lax.while_loop(cond_fn, body_fn, (zero, token_N, cache, state))[3]
  return state.finished_BxKxT[:, 0, :]


# -- model families ------------------------------------------------------------------------------

class IncrementalEncoderDecoder(Protocol):
  """What decoding needs from an encoder-decoder network (implemented by `T5Transformer`)."""

  def encode(self, encoder_input_tokens_BxS: jax.Array, encoder_segment_ids: jax.Array | None,
             encoder_positions: jax.Array | None) -> jax.Array: ...

  def init_decode_cache(self, batch_size: int, max_length: int) -> Any: ...

  def cross_attention_kv(self, encoded_BxSxD: jax.Array) -> Any: ...

  def decode_step(self, token_B: jax.Array, position: jax.Array, cache: Any, cross_kv: Any,
                  encoder_segment_ids_BxS: jax.Array) -> tuple[jax.Array, Any]: ...


class IncrementalDecoder(Protocol):
  """What decoding needs from a decoder-only network (implemented by `DecoderTransformer`)."""

  def prefill(self, prompt_BxP: jax.Array, segment_ids_BxP: jax.Array, positions_BxP: jax.Array,
              max_length: int) -> tuple[jax.Array, Any]: ...

  def decode_step(self, token_B: jax.Array, index: jax.Array, position_B: jax.Array, cache: Any,
                  kv_valid_BxL: jax.Array) -> tuple[jax.Array, Any]: ...


def expand_beams(tree: Any, num_beams: int) -> Any:
  """Every leaf's rows repeated `num_beams` times in place: row b becomes rows b*K .. b*K + K - 1."""
  if num_beams == 1:
    return tree
  return jax.tree.map(lambda x: jnp.repeat(x, num_beams, axis=0), tree)


def encoder_decoder_generate(module: IncrementalEncoderDecoder, encoder_input_tokens_BxS: jax.Array,
                             encoder_segment_ids_BxS: jax.Array | None = None,
                             encoder_positions_BxS: jax.Array | None = None, *, config: DecodeConfig,
                             rng: jax.Array | None = None, decoder_start_token: int = 0) -> jax.Array:
  """Decodes [B, max_new_tokens] int32 from an encoder-decoder; the input is encoded once."""
  batch = encoder_input_tokens_BxS.shape[0]
  if encoder_segment_ids_BxS is None:
    encoder_segment_ids_BxS = (encoder_input_tokens_BxS != 0).astype(jnp.int32)
  encoded_BxSxD = module.encode(encoder_input_tokens_BxS, encoder_segment_ids_BxS, encoder_positions_BxS)
  # Beams share their row's encoder output: expand it after encoding, not the inputs before.
  cross_kv, encoder_segment_ids_NxS = expand_beams(
      (module.cross_attention_kv(encoded_BxSxD), encoder_segment_ids_BxS), config.rows_per_example)
  rows = batch * config.rows_per_example
  cache = module.init_decode_cache(rows, config.max_new_tokens)

  def step_fn(token_N, step, cache):
    # The decoder input at position `step` is the token generated at `step - 1`.
    return module.decode_step(token_N, step, cache, cross_kv, encoder_segment_ids_NxS)

  first_logits_NxV, cache = step_fn(jnp.full((rows,), decoder_start_token, jnp.int32),
                                    jnp.asarray(0, jnp.int32), cache)
  return generate(first_logits_NxV, cache, step_fn, config, rng)


def left_align(tokens_BxP: jax.Array, mask_BxP: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moves each row's contiguous run of real tokens (mask != 0) to the end of the row.

  Then every prompt ends at the same slot, so all rows write the same cache slot per decoding
  step, whether the caller padded left or right.
  """
  length = tokens_BxP.shape[1]
  mask_BxP = mask_BxP != 0
  count_B = jnp.sum(mask_BxP, axis=1)
  first_B = jnp.argmax(mask_BxP, axis=1)  # 0 for an empty row, which stays all padding
  slot_P = jnp.arange(length)
  pad_B = length - count_B
  source_BxP = jnp.clip(first_B[:, None] + slot_P[None, :] - pad_B[:, None], 0, length - 1)
  aligned_mask_BxP = slot_P[None, :] >= pad_B[:, None]
  aligned_BxP = jnp.where(aligned_mask_BxP, jnp.take_along_axis(tokens_BxP, source_BxP, axis=1), 0)
  return aligned_BxP, aligned_mask_BxP.astype(jnp.int32)


def decoder_only_generate(module: IncrementalDecoder, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, *,
                          config: DecodeConfig, rng: jax.Array | None = None) -> jax.Array:
  """Decodes [B, max_new_tokens] int32 continuations of prompts padded left or right.

  The prompts are left-aligned and prefilled once; each step writes cache slot
  `prompt_len + step - 1` for every row, at the row's own RoPE position.
  """
  prompt_len = prompt_BxP.shape[1]
  prompt_BxP, mask_BxP = left_align(prompt_BxP, prompt_mask_BxP)
  positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0)
  first_logits_BxV, kv = module.prefill(prompt_BxP, mask_BxP, positions_BxP,
                                        prompt_len + config.max_new_tokens)
  # Which cache slots hold real tokens, and each row's position for its first generated token;
  # both ride in the cache so that beam search reorders them with it.
  cache = {"kv": kv, "kv_valid": jnp.pad(mask_BxP, ((0, 0), (0, config.max_new_tokens))),
           "next_position": jnp.sum(mask_BxP, axis=1).astype(jnp.int32)}
  first_logits_NxV, cache = expand_beams((first_logits_BxV, cache), config.rows_per_example)

  def step_fn(token_N, step, cache):
    index = prompt_len + step - 1  # the slot of the token generated at step - 1
    kv_valid_NxL = jax.lax.dynamic_update_slice(
        cache["kv_valid"], jnp.ones((token_N.shape[0], 1), jnp.int32), (0, index))
    logits_NxV, kv = module.decode_step(token_N, index, cache["next_position"] + step - 1, cache["kv"],
                                        kv_valid_NxL)
    return logits_NxV, {"kv": kv, "kv_valid": kv_valid_NxL, "next_position": cache["next_position"]}

  return generate(first_logits_NxV, cache, step_fn, config, rng)

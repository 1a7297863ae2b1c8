"""Fixed-shape batches of unpacked (inputs, targets) examples for jitted scoring and decoding.

Examples are sorted by input length and each batch is padded to a length bucket, so a short
prompt never pays for the longest one, and a jitted function compiles once per bucket.
Rows follow the model's `feature_layout`, as the trainer packs them: encoder-decoder rows
(prompt on the encoder side), or decoder-only rows (start token, prompt, then targets in one
sequence; `prompt_only` rows stop after the prompt, for decoding).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from sft_jax.data import packing

Pair = tuple[np.ndarray, np.ndarray]  # (input token ids, target token ids)


def input_bucket(longest: int, input_length: int, multiple: int = 64) -> int:
  """The padded input length of a batch: the next multiple of `multiple`, at most `input_length`."""
  return min(input_length, -(-longest // multiple) * multiple)


def _rows(examples: list[dict[str, np.ndarray]], longest: int, input_length: int, target_length: int,
          layout: str, prompt_only: bool, bos_id: int | None) -> dict[str, np.ndarray]:
  if layout == "encoder_decoder":
    return packing.pad_unpacked(examples, input_bucket(longest, input_length), target_length)
  if layout == "decoder_only":
    # The start token takes one prompt slot: prompts keep their last input_length - 1 tokens.
    length = input_bucket(min(longest, input_length - 1) + 1, input_length)
    return packing.pad_unpacked_decoder(examples, length, target_length, prompt_only=prompt_only, bos_id=bos_id)
  raise ValueError(f"feature_layout={layout!r}; expected 'encoder_decoder' or 'decoder_only'")


def run_in_batches(fn: Callable[[dict[str, jax.Array]], jax.Array], pairs: Sequence[Pair], *,
                   batch_size: int, input_length: int, target_length: int,
                   sharding: jax.sharding.Sharding, layout: str = "encoder_decoder",
                   prompt_only: bool = False, bos_id: int | None = None) -> np.ndarray:
  """Applies `fn` to the pairs in batches of `batch_size` rows; one output row per pair, in order.

  Rows are laid out by `packing.pad_unpacked` (inputs cut to `input_length`, targets to
  `target_length`) or, with `layout="decoder_only"`, by `packing.pad_unpacked_decoder` (start
  token `bos_id`, as the packer takes it: `packing.packer_bos_id(model.bos_id)`); a
  short last batch is filled with copies of its last pair whose outputs are dropped. Batches
  become global arrays with `sharding` (rows over the batch axes).
  """
  order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]))
  outputs: list[np.ndarray | None] = [None] * len(pairs)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    batch = _rows([{"inputs": pairs[k][0], "targets": pairs[k][1]} for k in padded],
                  max(len(pairs[k][0]) for k in chunk), input_length, target_length, layout, prompt_only,
                  bos_id)
    device_batch = {name: jax.make_array_from_process_local_data(sharding, value)
                    for name, value in batch.items()}
    result = np.asarray(jax.device_get(fn(device_batch)))
    for k, row in zip(chunk, result):
      outputs[k] = row
  return np.stack(outputs)


def run_choices_in_batches(fn: Callable[[dict[str, jax.Array]], jax.Array],
                           examples: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]], *, batch_size: int,
                           input_length: int, target_length: int, sharding: jax.sharding.Sharding,
                           batch_multiple: int = 1) -> list[np.ndarray]:
  """Applies `fn` to (prompt, choices) examples, each prompt once: one [num_choices] output per example.

  A batch holds up to P = `batch_size` // 2 prompts (rounded down to a multiple of
  `batch_multiple`, the sharded batch axes) and exactly `batch_size` choice rows, filled with
  whole examples in order of prompt length, so its shapes are fixed and a function compiles once
  per input bucket. Features: `encoder_*` [P, S] and `decoder_*` [batch_size, T] as
  `packing.pad_unpacked` lays out each (prompt, choice) row, and `choice_prompt_index`
  [batch_size], each row's prompt. Unused slots repeat the batch's last prompt and choice; their
  outputs are dropped. An example with more than `batch_size` choices is an error.
  """
  most = max(len(choices) for _, choices in examples)
  if most > batch_size:
    raise ValueError(f"an example has {most} answer choices, more than the batch of {batch_size} rows")
  prompts_per_batch = max(batch_multiple, (batch_size // 2) // batch_multiple * batch_multiple)
  order = sorted(range(len(examples)), key=lambda k: len(examples[k][0]))
  outputs: list[np.ndarray | None] = [None] * len(examples)
  start = 0
  while start < len(order):
    chunk, rows = [], 0
    for k in order[start:start + prompts_per_batch]:
      if rows + len(examples[k][1]) > batch_size:
        break
      chunk.append(k)
      rows += len(examples[k][1])
    start += len(chunk)
    prompts = chunk + [chunk[-1]] * (prompts_per_batch - len(chunk))
    pairs = [(p, choice) for p, k in enumerate(chunk) for choice in examples[k][1]]
    pairs += [pairs[-1]] * (batch_size - len(pairs))
    length = input_bucket(max(len(examples[k][0]) for k in chunk), input_length)
    rows_by_prompt = packing.pad_unpacked([{"inputs": examples[prompts[p]][0], "targets": choice}
                                           for p, choice in pairs], length, target_length)
    encoder = packing.pad_unpacked([{"inputs": examples[k][0], "targets": examples[k][1][0]} for k in prompts],
                                   length, target_length)
    batch = {name: (encoder[name] if name.startswith("encoder_") else rows_by_prompt[name]) for name in encoder}
    batch["choice_prompt_index"] = np.array([p for p, _ in pairs], np.int32)
    device_batch = {name: jax.make_array_from_process_local_data(
        sharding if value.ndim > 1 else jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
            sharding.spec[0])), value) for name, value in batch.items()}
    result = np.asarray(jax.device_get(fn(device_batch)))
    row = 0
    for k in chunk:
      outputs[k] = result[row:row + len(examples[k][1])]
      row += len(examples[k][1])
  return outputs

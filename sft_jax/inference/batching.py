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

  A batch holds B prompts and C choices each, C the most any example has (so a function
  compiles once per input bucket), and B = `batch_size` // C rounded down to a multiple of
  `batch_multiple` (the sharded batch axes), so a batch decodes about `batch_size` rows. The
  `encoder_*` features are [B, S] and the `decoder_*` features [B, C, T], as
  `packing.pad_unpacked` lays out each (prompt, choice) row; missing choices repeat the first
  and short last batches the last example, and their outputs are dropped.
  """
  num_choices = max(len(choices) for _, choices in examples)
  prompts_per_batch = max(batch_multiple, (batch_size // num_choices) // batch_multiple * batch_multiple)
  order = sorted(range(len(examples)), key=lambda k: len(examples[k][0]))
  outputs: list[np.ndarray | None] = [None] * len(examples)
  for start in range(0, len(order), prompts_per_batch):
    chunk = order[start:start + prompts_per_batch]
    padded = chunk + [chunk[-1]] * (prompts_per_batch - len(chunk))
    length = input_bucket(max(len(examples[k][0]) for k in chunk), input_length)
    pairs = [{"inputs": examples[k][0], "targets": choices[min(c, len(choices) - 1)]}
             for k in padded for choices in [examples[k][1]] for c in range(num_choices)]
    rows = packing.pad_unpacked(pairs, length, target_length)
    batch = {name: (value[::num_choices] if name.startswith("encoder_")
                    else value.reshape(prompts_per_batch, num_choices, -1)) for name, value in rows.items()}
    device_batch = {name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()}
    result = np.asarray(jax.device_get(fn(device_batch)))
    for k, row in zip(chunk, result):
      outputs[k] = row[:len(examples[k][1])]
  return outputs

"""Fixed-shape batches of unpacked (inputs, targets) examples for jitted scoring and decoding.

Examples are sorted by input length and each batch is padded to a length bucket, so a short
prompt never pays for the longest one, and a jitted function compiles once per bucket.
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


def run_in_batches(fn: Callable[[dict[str, jax.Array]], jax.Array], pairs: Sequence[Pair], *,
                   batch_size: int, input_length: int, target_length: int,
                   sharding: jax.sharding.Sharding) -> np.ndarray:
  """Applies `fn` to the pairs in batches of `batch_size` rows; one output row per pair, in order.

  Rows are laid out by `packing.pad_unpacked` (inputs cut to `input_length`, targets to
  `target_length`); a short last batch is filled with copies of its last pair whose outputs
  are dropped. Batches become global arrays with `sharding` (rows over the batch axes).
  """
  order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]))
  outputs: list[np.ndarray | None] = [None] * len(pairs)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    length = input_bucket(max(len(pairs[k][0]) for k in chunk), input_length)
    batch = packing.pad_unpacked([{"inputs": pairs[k][0], "targets": pairs[k][1]} for k in padded],
                                 length, target_length)
    device_batch = {name: jax.make_array_from_process_local_data(sharding, value)
                    for name, value in batch.items()}
    result = np.asarray(jax.device_get(fn(device_batch)))
    for k, row in zip(chunk, result):
      outputs[k] = row
  return np.stack(outputs)

"""Preference pairs for DPO: seqio features and the trainer's rows of (prompt, chosen, rejected).

A preference task's examples hold three strings, `inputs` (the prompt), `chosen` and `rejected`
(two replies, the first preferred), tokenized with EOS like an SFT task's `inputs` and `targets`.
The trainer reads them one pair per row (`PairBatcher`), in the layout `sft_jax.train.dpo`
documents: the prompt's `encoder_*` features once, and each reply's `decoder_*` features under a
`chosen_` or `rejected_` prefix. An encoder-decoder model encodes the prompt once for both
replies; a decoder-only model reads it as the prefix of each (`score_pairs` of the models).
Rows are not packed: a pair's two sequences must stay aligned row by row.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import seqio

from sft_jax.data import packing

SIDES = ("chosen", "rejected")
TEXT_FEATURES = ("inputs", *SIDES)


def preference_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """Output features of a preference task: the prompt and both replies, each ending in EOS."""
  return {name: seqio.Feature(vocabulary=vocabulary, add_eos=True) for name in TEXT_FEATURES}


def pair_batch(examples: list[Mapping[str, np.ndarray]], input_length: int,
               target_length: int) -> dict[str, np.ndarray]:
  """One (prompt, chosen, rejected) per row, padded (and cut, EOS kept) to the lengths."""
  sides = {side: packing.pad_unpacked([{"inputs": e["inputs"], "targets": e[side]} for e in examples],
                                      input_length, target_length) for side in SIDES}
  batch = {k: v for k, v in sides["chosen"].items() if k.startswith("encoder_")}
  for side, rows in sides.items():
    batch.update({f"{side}_{k}": v for k, v in rows.items() if k.startswith("decoder_")})
  return batch


def batch_counts(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Real tokens, token slots and pairs of a pair batch (host-side), as `packing.batch_counts`."""
  real = [batch["encoder_segment_ids"] > 0] + [batch[f"{side}_decoder_segment_ids"] > 0 for side in SIDES]
  return {"tokens": float(sum(r.sum() for r in real)), "slots": float(sum(r.size for r in real)),
          "examples": float(batch["encoder_segment_ids"].shape[0])}


class PairBatcher:
  """Batches of `rows` pairs from a stream of tokenized preference examples, with packer-style counts.

  A pair whose replies are equal once cut to `target_length` carries no preference: it is
  dropped and counted, as are pairs with an empty reply.
  """

  def __init__(self, examples: Iterator[Mapping[str, np.ndarray]], rows: int, input_length: int,
               target_length: int):
    self._examples = examples
    self.rows, self.input_length, self.target_length = rows, input_length, target_length
    self.counts = packing.PackingCounts()

  def __iter__(self) -> PairBatcher:
    return self

  def _keep(self, example: Mapping[str, np.ndarray]) -> bool:
    """Counts `example` and says whether it is a usable pair."""
    self.counts.examples += 1
    cut_inputs = len(example["inputs"]) > self.input_length
    cut_targets = any(len(example[side]) > self.target_length for side in SIDES)
    chosen, rejected = (np.asarray(example[side][:self.target_length]) for side in SIDES)
    if min(len(chosen), len(rejected)) <= 1 or np.array_equal(chosen, rejected):
      self.counts.dropped += 1
      return False
    self.counts.truncated += int(cut_inputs or cut_targets)
    self.counts.truncated_inputs += int(cut_inputs)
    self.counts.truncated_targets += int(cut_targets)
    return True

  def __next__(self) -> dict[str, np.ndarray]:
    kept = []
    while len(kept) < self.rows:
      example = next(self._examples)  # StopIteration ends the stream (a finite split)
      if self._keep(example):
        kept.append(example)
    return pair_batch(kept, self.input_length, self.target_length)

"""Best-fit packing of encoder-decoder examples into fixed-shape batches.

seqio's `trim_and_pack_dataset` packs next-fit in stream order (78% token
efficiency at length 512 on long-tailed data). Packing best-fit, largest first,
over a pool of upcoming examples fills rows almost completely, which on a CPU
budget is directly more examples per second. tf.data has no best-fit op, so the
packer runs on the host over numpy arrays; it loops over examples, never tokens.

Output features follow seqio's EncDecFeatureConverter names. Segment ids start at
1 per row (0 is padding) and positions restart at 0 for every packed example, so
attention masks and relative positions keep packed examples apart.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping

import numpy as np

from sft_jax.data.vocabularies import EOS_ID

FEATURES = (
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
    "decoder_positions", "decoder_loss_weights",
)


@dataclasses.dataclass
class PackingCounts:
  """What the packer did so far, for logging."""

  examples: int = 0
  truncated_inputs: int = 0
  truncated_targets: int = 0


def _truncate(tokens: np.ndarray, length: int) -> tuple[np.ndarray, bool]:
  """Cuts `tokens` to `length`, keeping EOS as the last token when it had one."""
  if len(tokens) <= length:
    return tokens, False
  cut = tokens[:length].copy()
  if tokens[-1] == EOS_ID:
    cut[-1] = EOS_ID
  return cut, True


def _shift_right(targets: np.ndarray) -> np.ndarray:
  """Decoder inputs of one example: 0 (T5's start token) then the targets minus the last."""
  return np.concatenate([np.zeros(1, np.int32), targets[:-1]])


def assemble_row(examples: list[tuple[np.ndarray, np.ndarray]], input_length: int,
                 target_length: int) -> dict[str, np.ndarray]:
  """Lays out the (inputs, targets) pairs of one packed row, padded to the lengths."""
  row = {name: np.zeros(input_length if name.startswith("encoder") else target_length, np.int32)
         for name in FEATURES}
  enc_at = dec_at = 0
  for segment, (inputs, targets) in enumerate(examples, start=1):
    enc_end, dec_end = enc_at + len(inputs), dec_at + len(targets)
    row["encoder_input_tokens"][enc_at:enc_end] = inputs
    row["encoder_segment_ids"][enc_at:enc_end] = segment
    row["encoder_positions"][enc_at:enc_end] = np.arange(len(inputs))
    row["decoder_target_tokens"][dec_at:dec_end] = targets
    row["decoder_input_tokens"][dec_at:dec_end] = _shift_right(targets)
    row["decoder_segment_ids"][dec_at:dec_end] = segment
    row["decoder_positions"][dec_at:dec_end] = np.arange(len(targets))
    row["decoder_loss_weights"][dec_at:dec_end] = 1
    enc_at, dec_at = enc_end, dec_end
  return row


class BestFitPacker:
  """Packs a stream of tokenized {"inputs", "targets"} examples into [batch, length] rows.

  Each batch is filled from a pool of upcoming examples, largest first, every
  example going to the row it fills most tightly (on both encoder and decoder
  length). Examples that do not fit wait for the next batch; one that has
  waited `max_wait` batches goes first. The output is a deterministic function of
  the input stream, so a data position is just the number of batches emitted.
  """

  def __init__(self, examples: Iterable[Mapping[str, np.ndarray]], batch_size: int,
               input_length: int, target_length: int, pool_factor: float = 2.0, max_wait: int = 2):
    self._examples = iter(examples)
    self.batch_size, self.input_length, self.target_length = batch_size, input_length, target_length
    self._pool_tokens = pool_factor * batch_size * (input_length + target_length)
    self._max_wait = max_wait
    self._pool: list[list] = []  # [inputs, targets, batches waited]
    self._exhausted = False
    self.counts = PackingCounts()
    self.batches_emitted = 0

  def _refill(self) -> None:
    pooled = sum(len(i) + len(t) for i, t, _ in self._pool)
    while not self._exhausted and pooled < self._pool_tokens:
      try:
        ex = next(self._examples)
      except StopIteration:
        self._exhausted = True
        break
      targets = np.asarray(ex["targets"], np.int32)
      if len(targets) == 0 or (len(targets) == 1 and targets[0] == EOS_ID):
        raise ValueError(f"example with no target tokens (inputs: {np.asarray(ex['inputs'])[:32]}...)")
      inputs, cut_in = _truncate(np.asarray(ex["inputs"], np.int32), self.input_length)
      targets, cut_tg = _truncate(targets, self.target_length)
      self.counts.examples += 1
      self.counts.truncated_inputs += cut_in
      self.counts.truncated_targets += cut_tg
      self._pool.append([inputs, targets, 0])
      pooled += len(inputs) + len(targets)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self._refill()
    if not self._pool:
      raise StopIteration
    enc_free = np.full(self.batch_size, self.input_length)
    dec_free = np.full(self.batch_size, self.target_length)
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.batch_size)]
    # Overdue examples first, then largest first; the sort is stable, so ties keep stream order.
    order = sorted(range(len(self._pool)), key=lambda k: (
        self._pool[k][2] < self._max_wait, -(len(self._pool[k][0]) + len(self._pool[k][1]))))
    placed = set()
    for k in order:
      inputs, targets, _ = self._pool[k]
      fits = (enc_free >= len(inputs)) & (dec_free >= len(targets))
      if not fits.any():
        continue
      slack = (enc_free - len(inputs)) / self.input_length + (dec_free - len(targets)) / self.target_length
      row = int(np.argmin(np.where(fits, slack, np.inf)))
      rows[row].append((inputs, targets))
      enc_free[row] -= len(inputs)
      dec_free[row] -= len(targets)
      placed.add(k)
    self._pool = [[i, t, w + 1] for k, (i, t, w) in enumerate(self._pool) if k not in placed]
    self.batches_emitted += 1
    laid_out = [assemble_row(r, self.input_length, self.target_length) for r in rows]
    return {name: np.stack([r[name] for r in laid_out]) for name in FEATURES}


def batch_counts(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Real tokens, token slots and examples of a batch in the packed layout (host-side)."""
  enc = batch["encoder_segment_ids"] > 0
  dec = batch["decoder_segment_ids"] > 0
  # Segment ids run 1..n in every row, so a row's example count is its largest id.
  return {"tokens": float(enc.sum() + dec.sum()), "slots": float(enc.size + dec.size),
          "examples": float(batch["encoder_segment_ids"].max(axis=1).sum())}


def pad_unpacked(examples: list[Mapping[str, np.ndarray]], input_length: int,
                 target_length: int) -> dict[str, np.ndarray]:
  """One example per row (for scoring and decoding): the packed layout with one segment."""
  rows = []
  for ex in examples:
    inputs, _ = _truncate(np.asarray(ex["inputs"], np.int32), input_length)
    targets, _ = _truncate(np.asarray(ex["targets"], np.int32), target_length)
    rows.append(assemble_row([(inputs, targets)], input_length, target_length))
  return {name: np.stack([r[name] for r in rows]) for name in FEATURES}

"""Best-fit-decreasing packing of tokenized examples into fixed-length rows.

seqio's `trim_and_pack_dataset` packs next-fit in stream order: a row is closed
as soon as the next example does not fit, which leaves 10-20% of the slots as
padding on long-tailed instruction data. Here a buffer of upcoming examples is
sorted largest first (in tokens) and every example goes to the open row it
fills most tightly; rows are emitted once the buffer is placed, except the last
row opened (usually the emptiest), which stays open for the next buffer, so
only a finite stream's very last row is short. tf.data has no such op, so the packer
runs on the host over numpy arrays; it loops over examples, never tokens.

Two layouts, with seqio's feature names:
  encoder-decoder (`input_length` set): EncDecFeatureConverter's FEATURES; an
    example must fit the row on both the encoder and the decoder side.
  decoder-only (`input_length=None`): DECODER_FEATURES, from {"inputs",
    "targets"} (concatenated, loss on the targets), {"targets", "loss_weights"}
    (a rendered chat) or {"targets"} alone (loss everywhere). An over-long
    {"inputs", "targets"} example gives up prompt tokens from its start first
    (the end of a prompt, next to the response, is what conditions it), down to
    `prompt_length`; then its targets are cut from the end, EOS kept.
Segment ids run 1..n in every row (0 is padding) and positions restart at 0 for
every example, so attention masks and positions keep packed examples apart.

The output is a pure function of the input stream and the settings: a resumed
run replays it by counting rows or batches.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from sft_jax.data.vocabularies import EOS_ID

FEATURES = (
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
    "decoder_positions", "decoder_loss_weights",
)
DECODER_FEATURES = (
    "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
    "decoder_positions", "decoder_loss_weights",
)
# 1024 examples per buffer packs a long-tailed stream (median 150 tokens) at
# 99.9% token efficiency into 2048-token rows (benchmarks/packing.py).
DEFAULT_BUFFER_SIZE = 1024
OVERLONG_POLICIES = ("truncate", "drop")


@dataclasses.dataclass
class PackingCounts:
  """What the packer did so far, for logging: every example read is packed whole, truncated or dropped."""

  examples: int = 0  # read from the stream
  truncated: int = 0  # cut to fit a row, on either side, and packed
  truncated_inputs: int = 0  # prompt cut: encoder inputs, or a decoder-only prompt (from its start)
  truncated_targets: int = 0  # targets (decoder side) cut
  dropped: int = 0  # too long with overlong="drop", or left with no target once cut


class _Segment(NamedTuple):
  """One example laid out for a row: encoder tokens (empty for decoder-only) and aligned decoder arrays."""

  encoder_tokens: np.ndarray
  decoder_inputs: np.ndarray
  decoder_targets: np.ndarray
  loss_weights: np.ndarray


def _truncate(tokens: np.ndarray, length: int, eos_id: int = EOS_ID) -> tuple[np.ndarray, bool]:
  """Cuts `tokens` to `length`, keeping EOS as the last token when it had one."""
  if len(tokens) <= length:
    return tokens, False
  cut = tokens[:length].copy()
  if tokens[-1] == eos_id:
    cut[-1] = eos_id
  return cut, True


def _shift_right(targets: np.ndarray) -> np.ndarray:
  """Decoder inputs of one example: 0 (seqio's start token) then the targets minus the last."""
  return np.concatenate([np.zeros(1, np.int32), targets[:-1]])


def _has_target(targets: np.ndarray, weights: np.ndarray, eos_id: int) -> bool:
  """Whether some weighted target token is not EOS: an EOS alone teaches nothing but stopping."""
  return bool(np.any((weights > 0) & (targets != eos_id)))


def _no_target_error(example: Mapping[str, np.ndarray]) -> ValueError:
  shown = {k: np.asarray(v)[:32].tolist() for k, v in example.items() if k in ("inputs", "targets", "loss_weights")}
  return ValueError(f"example with no target tokens (no loss-weighted token other than EOS): {shown}")


# The packer's `bos_id` for a decoder without a start token: each sequence begins with its own
# first token, which is never predicted (a Hugging Face Qwen2, whose tokenizer adds no BOS).
NO_BOS = -1


def packer_bos_id(model_bos_id: int | None) -> int | None:
  """The packer's `bos_id` for a model's start token (`DecoderOnlyModel.bos_id`).

  0 is seqio's shift-right start (packer `None`, the layout models trained from scratch have
  always had); None is no start token (`NO_BOS`); any other id is prefixed as BOS.
  """
  if model_bos_id is None:
    return NO_BOS
  return model_bos_id or None


def _decoder_sequence(example: Mapping[str, np.ndarray], bos_id: int | None) -> tuple[np.ndarray, ...]:
  """(inputs, targets, weights) of a decoder-only example, before any truncation."""
  targets = np.asarray(example["targets"], np.int32)
  if "loss_weights" in example:
    weights = np.asarray(example["loss_weights"], np.int32)
    if weights.shape != targets.shape:
      raise ValueError(f"loss_weights has shape {weights.shape} but targets has shape {targets.shape}")
    seq = targets
  elif "inputs" in example:
    inputs = np.asarray(example["inputs"], np.int32)
    seq = np.concatenate([inputs, targets])
    weights = np.concatenate([np.zeros(len(inputs), np.int32), np.ones(len(targets), np.int32)])
  else:
    seq, weights = targets, np.ones(len(targets), np.int32)
  if bos_id is None:
    return _shift_right(seq), seq, weights
  if bos_id != NO_BOS and (len(seq) == 0 or seq[0] != bos_id):
    seq = np.concatenate([np.array([bos_id], np.int32), seq])
    weights = np.concatenate([np.zeros(1, np.int32), weights])
  # Causal-LM convention (Hugging Face LLaMA): predict token t+1 from tokens up to t.
  return seq[:-1], seq[1:], weights[1:]


def _prompted_segment(example: Mapping[str, np.ndarray], length: int, prompt_length: int, overlong: str,
                      bos_id: int | None, eos_id: int, counts: PackingCounts) -> _Segment | None:
  """A decoder-only {"inputs", "targets"} example fitted to `length` slots; None when dropped.

  The row holds len(inputs) + len(targets) tokens (with `bos_id`, BOS is prefixed and the last
  token only a target), so an over-long example is cut to that sum: the prompt keeps its last
  max(prompt_length, length - len(targets)) tokens, the targets what is left, EOS kept last.
  """
  inputs = np.asarray(example["inputs"], np.int32)
  targets = np.asarray(example["targets"], np.int32)
  if bos_id is not None and len(inputs) and inputs[0] == bos_id:
    inputs = inputs[1:]  # prefixed again by _decoder_sequence, also when the prompt is cut
  if not _has_target(targets, np.ones(len(targets), np.int32), eos_id):
    raise _no_target_error(example)
  if len(inputs) + len(targets) > length:
    if overlong == "drop":
      counts.dropped += 1
      return None
    keep_inputs = min(len(inputs), max(prompt_length, length - len(targets)))
    cut_in = keep_inputs < len(inputs)
    inputs = inputs[len(inputs) - keep_inputs:]
    targets, cut_tg = _truncate(targets, length - keep_inputs, eos_id)
    if not _has_target(targets, np.ones(len(targets), np.int32), eos_id):
      counts.dropped += 1  # only EOS left of the response
      return None
    counts.truncated += 1
    counts.truncated_inputs += cut_in
    counts.truncated_targets += cut_tg
  dec_inputs, dec_targets, weights = _decoder_sequence({"inputs": inputs, "targets": targets}, bos_id)
  return _Segment(np.zeros(0, np.int32), dec_inputs, dec_targets, weights)


def _segment_of(example: Mapping[str, np.ndarray], input_length: int | None, target_length: int,
                overlong: str, bos_id: int | None, eos_id: int,
                counts: PackingCounts, prompt_length: int | None = None) -> _Segment | None:
  """Validates, lays out and fits one example to a row; None when it is dropped (and counted)."""
  counts.examples += 1
  if input_length is None and "inputs" in example and "loss_weights" not in example:
    return _prompted_segment(example, target_length, target_length // 2 if prompt_length is None else prompt_length,
                             overlong, bos_id, eos_id, counts)
  if input_length is not None:
    inputs = np.asarray(example["inputs"], np.int32)
    targets = np.asarray(example["targets"], np.int32)
    dec_inputs, weights = None, np.ones(len(targets), np.int32)
  else:
    inputs = np.zeros(0, np.int32)
    dec_inputs, targets, weights = _decoder_sequence(example, bos_id)
  if not _has_target(targets, weights, eos_id):
    raise _no_target_error(example)

  cut_in = input_length is not None and len(inputs) > input_length
  cut_tg = len(targets) > target_length
  if cut_in or cut_tg:
    if overlong == "drop":
      counts.dropped += 1
      return None
    if cut_in:
      inputs, _ = _truncate(inputs, input_length, eos_id)
    if cut_tg:
      targets, _ = _truncate(targets, target_length, eos_id)
      # The kept EOS takes the weight of the token it replaces: cut inside a response it
      # is learned (as in encoder-decoder targets), cut inside a prompt it is not, so the
      # model is never taught to stop in the middle of a prompt.
      weights = weights[:target_length]
      if dec_inputs is not None:
        dec_inputs = dec_inputs[:target_length]
      if not _has_target(targets, weights, eos_id):
        counts.dropped += 1  # the prompt alone fills the row: nothing left to learn
        return None
    counts.truncated += 1
    counts.truncated_inputs += cut_in
    counts.truncated_targets += cut_tg
  if dec_inputs is None:
    dec_inputs = _shift_right(targets)
  return _Segment(inputs, dec_inputs, targets, weights)


def _layout_row(segments: list[_Segment], input_length: int | None, target_length: int) -> dict[str, np.ndarray]:
  """The features of one packed row, padded with zeros to the lengths."""

  def side(lengths: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    total = sum(lengths)
    ids = np.zeros(length, np.int32)
    ids[:total] = np.repeat(np.arange(1, len(lengths) + 1, dtype=np.int32), lengths)
    starts = np.cumsum([0] + lengths)[:-1]
    pos = np.zeros(length, np.int32)
    pos[:total] = np.arange(total) - np.repeat(starts, lengths)
    return ids, pos

  def padded(parts: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros(length, np.int32)
    if parts:
      joined = np.concatenate(parts)
      out[:len(joined)] = joined
    return out

  dec_lengths = [len(s.decoder_targets) for s in segments]
  row = {"decoder_target_tokens": padded([s.decoder_targets for s in segments], target_length),
         "decoder_input_tokens": padded([s.decoder_inputs for s in segments], target_length),
         "decoder_loss_weights": padded([s.loss_weights for s in segments], target_length)}
  row["decoder_segment_ids"], row["decoder_positions"] = side(dec_lengths, target_length)
  if input_length is None:
    return {name: row[name] for name in DECODER_FEATURES}
  row["encoder_input_tokens"] = padded([s.encoder_tokens for s in segments], input_length)
  row["encoder_segment_ids"], row["encoder_positions"] = side([len(s.encoder_tokens) for s in segments],
                                                              input_length)
  return {name: row[name] for name in FEATURES}


def assemble_row(examples: list[tuple[np.ndarray, np.ndarray]], input_length: int,
                 target_length: int) -> dict[str, np.ndarray]:
  """Lays out the (inputs, targets) pairs of one encoder-decoder row, padded to the lengths."""
  segments = [_Segment(np.asarray(i, np.int32), _shift_right(np.asarray(t, np.int32)),
                       np.asarray(t, np.int32), np.ones(len(t), np.int32)) for i, t in examples]
  return _layout_row(segments, input_length, target_length)


class BestFitRowPacker:
  """Packs a stream of tokenized examples into rows, best-fit decreasing over a buffer.

  Each round reads `buffer_size` examples, sorts them by token count, largest
  first (stable, so ties keep stream order), and puts each into the open row
  where it leaves the fewest free token slots, opening a row when none has room
  (encoder-decoder: room on both sides, slots of both sides counted).
  `input_length=None` gives the decoder-only layout; there `bos_id` prefixes
  each sequence with that token and predicts token t+1 from tokens up to t,
  while `bos_id=None` keeps seqio's shift-right with 0 at each segment start and
  `bos_id=NO_BOS` starts each segment with its own first token (`packer_bos_id`).
  Examples longer than a row are truncated (EOS kept last) or dropped, per
  `overlong`, and counted; a truncated example left with no loss-weighted
  token but EOS (its prompt fills the row) is dropped and counted. A decoder-only
  prompt is cut from its start and keeps at least `prompt_length` tokens (default
  half the row) when its targets are long; see `_prompted_segment`.

  Rows come out of a round ordered by their largest example, and example length
  follows the task, so consecutive rows share tasks. With `shuffle_seed` set, the
  rows of each round are permuted (seeded by the seed and the round number, so
  the stream stays deterministic) before they are emitted, which keeps batches
  mixed; the trainer sets it, the layout tests leave it off.
  """

  def __init__(self, examples: Iterable[Mapping[str, np.ndarray]], input_length: int | None,
               target_length: int, *, buffer_size: int = DEFAULT_BUFFER_SIZE, overlong: str = "truncate",
               bos_id: int | None = None, eos_id: int = EOS_ID, shuffle_seed: int | None = None,
               prompt_length: int | None = None):
    if overlong not in OVERLONG_POLICIES:
      raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if buffer_size < 1:
      raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
    if input_length is not None and bos_id is not None:
      raise ValueError("bos_id applies to the decoder-only layout (input_length=None)")
    if prompt_length is not None and (input_length is not None or not 0 <= prompt_length < target_length):
      raise ValueError(f"prompt_length={prompt_length} needs the decoder-only layout and must be below the "
                       f"row length {target_length}, which leaves room for targets")
    self.prompt_length = prompt_length
    self._examples = iter(examples)
    self.input_length, self.target_length = input_length, target_length
    self.buffer_size, self.overlong, self.bos_id, self.eos_id = buffer_size, overlong, bos_id, eos_id
    self.features = FEATURES if input_length is not None else DECODER_FEATURES
    self.counts = PackingCounts()
    self.rows_emitted = 0
    self._carried: list[_Segment] = []  # the last row opened, still open for the next round
    self._ready: collections.deque[list[_Segment]] = collections.deque()
    self._exhausted = False
    self._shuffle_seed = shuffle_seed
    self._rounds = 0

  def _read_buffer(self) -> list[_Segment]:
    buffer: list[_Segment] = []
    while not self._exhausted and len(buffer) < self.buffer_size:
      try:
        example = next(self._examples)
      except StopIteration:
        self._exhausted = True
        break
      segment = _segment_of(example, self.input_length, self.target_length, self.overlong, self.bos_id,
                            self.eos_id, self.counts, self.prompt_length)
      if segment is not None:
        buffer.append(segment)
    return buffer

  def _pack_round(self) -> None:
    """Places one buffer of examples into rows and queues the rows that are done."""
    buffer = self._read_buffer()
    enc_length = self.input_length or 0
    enc_len = np.array([len(s.encoder_tokens) for s in buffer], np.int64)
    dec_len = np.array([len(s.decoder_targets) for s in buffer], np.int64)
    # Sizes and free space are token slots, both sides together: the efficiency a
    # trainer gets is real tokens over slots, so that is what the fit minimizes.
    order = np.argsort(-(enc_len + dec_len), kind="stable")  # stable: equal sizes keep stream order
    rows = [self._carried] if self._carried else []
    enc_free = np.zeros(len(buffer) + 1, np.int64)
    dec_free = np.zeros(len(buffer) + 1, np.int64)
    if rows:
      enc_free[0] = enc_length - sum(len(s.encoder_tokens) for s in self._carried)
      dec_free[0] = self.target_length - sum(len(s.decoder_targets) for s in self._carried)
    for k in order:
      n = len(rows)
      fits = (enc_free[:n] >= enc_len[k]) & (dec_free[:n] >= dec_len[k])
      if fits.any():
        # argmin takes the first of equal slacks: ties go to the oldest row.
        row = int(np.argmin(np.where(fits, enc_free[:n] + dec_free[:n], np.iinfo(np.int64).max)))
      else:
        row = n
        rows.append([])
        enc_free[row], dec_free[row] = enc_length, self.target_length
      rows[row].append(buffer[k])
      enc_free[row] -= enc_len[k]
      dec_free[row] -= dec_len[k]
    self._carried = []
    if rows and not self._exhausted:
      # Every earlier row lacked room for the example that opened the last one, and later
      # examples are no larger, so the last row is usually the emptiest: it stays open for
      # the next buffer while this buffer's smallest example would still fit.
      last = len(rows) - 1
      if enc_free[last] >= enc_len.min() and dec_free[last] >= dec_len.min():
        self._carried = rows.pop()
    if self._shuffle_seed is not None:
      permutation = np.random.default_rng((self._shuffle_seed, self._rounds)).permutation(len(rows))
      rows = [rows[i] for i in permutation]
    self._rounds += 1
    self._ready.extend(rows)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    while not self._ready:
      if self._exhausted:
        raise StopIteration
      self._pack_round()
    self.rows_emitted += 1
    return _layout_row(self._ready.popleft(), self.input_length, self.target_length)


class BestFitPacker:
  """Groups the rows of a BestFitRowPacker into [batch_size, length] numpy batches.

  A finite stream's last batch is filled up with empty rows (segment id 0).
  """

  def __init__(self, examples: Iterable[Mapping[str, np.ndarray]], batch_size: int, input_length: int | None,
               target_length: int, **row_packer_options):
    self.batch_size = batch_size
    self._rows = BestFitRowPacker(examples, input_length, target_length, **row_packer_options)
    self.batches_emitted = 0

  @property
  def counts(self) -> PackingCounts:
    return self._rows.counts

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows = [row for _, row in zip(range(self.batch_size), self._rows)]
    if not rows:
      raise StopIteration
    while len(rows) < self.batch_size:
      rows.append(_layout_row([], self._rows.input_length, self._rows.target_length))
    self.batches_emitted += 1
    return {name: np.stack([r[name] for r in rows]) for name in self._rows.features}


def batch_counts(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Real tokens, token slots and examples of a packed batch, either layout (host-side)."""
  sides = [batch[k] > 0 for k in ("encoder_segment_ids", "decoder_segment_ids") if k in batch]
  # Segment ids run 1..n in every row and every example has decoder tokens, so a
  # row's example count is its largest decoder segment id.
  return {"tokens": float(sum(s.sum() for s in sides)), "slots": float(sum(s.size for s in sides)),
          "examples": float(batch["decoder_segment_ids"].max(axis=1).sum())}


def pad_unpacked(examples: list[Mapping[str, np.ndarray]], input_length: int,
                 target_length: int) -> dict[str, np.ndarray]:
  """One encoder-decoder example per row (for scoring and decoding): the packed layout with one segment."""
  rows = []
  for ex in examples:
    inputs, _ = _truncate(np.asarray(ex["inputs"], np.int32), input_length)
    targets, _ = _truncate(np.asarray(ex["targets"], np.int32), target_length)
    rows.append(assemble_row([(inputs, targets)], input_length, target_length))
  return {name: np.stack([r[name] for r in rows]) for name in FEATURES}


def pad_unpacked_decoder(examples: list[Mapping[str, np.ndarray]], input_length: int, target_length: int, *,
                         prompt_only: bool = False, bos_id: int | None = None) -> dict[str, np.ndarray]:
  """One decoder-only example per row (for scoring and decoding), laid out as the packer trains.

  The prompt keeps its last `input_length - 1` tokens (the start token, 0 or `bos_id`, takes
  the first slot; with `NO_BOS` there is none and the prompt's first token starts the row), the targets their first `target_length` (EOS kept). Rows have
  `input_length + target_length` slots; with `prompt_only` they hold only the prompt after the
  start token (`input_length` slots), whose last slot predicts the first target token.
  """
  if input_length < 2:
    raise ValueError(f"input_length={input_length}: a decoder prompt needs a start token and one more slot")
  rows = []
  for ex in examples:
    inputs = np.asarray(ex["inputs"], np.int32)
    if bos_id is not None and len(inputs) and inputs[0] == bos_id:
      inputs = inputs[1:]
    inputs = inputs[max(0, len(inputs) - (input_length - 1)):]
    targets, _ = _truncate(np.asarray(ex["targets"], np.int32), target_length)
    dec_inputs, dec_targets, weights = _decoder_sequence({"inputs": inputs, "targets": targets}, bos_id)
    keep = len(inputs) + (bos_id != NO_BOS) if prompt_only else len(dec_targets)
    segment = _Segment(np.zeros(0, np.int32), dec_inputs[:keep], dec_targets[:keep], weights[:keep])
    rows.append(_layout_row([segment], None, input_length if prompt_only else input_length + target_length))
  return {name: np.stack([r[name] for r in rows]) for name in DECODER_FEATURES}

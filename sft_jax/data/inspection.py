"""Human-readable dumps of what a mixture feeds the model: examples, tokens, counts, packing.

`inspect` prints, for a mixture or task split:
  - the first n examples as rendered text, and token by token: each token decoded on its
    own, tokens separated by `|`, loss-weighted (target) tokens wrapped in `[[...]]` (or
    coloured green for a terminal);
  - the number of examples of every task in the split; a stream that does not end (the
    synthetic training splits) is reported as unlimited, with its validation split counted;
  - what best-fit packing makes of the first few batches: examples per row, the share of
    token slots holding real tokens, and how many examples had to be truncated.
The examples and the packed batches come from one stream, the one the trainer reads.

`mock_tfds()` replaces every TFDS dataset by random examples of its features, so a TFDS
mixture's templates, tokenization and packing can be checked before anything is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
from concurrent import futures
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from sft_jax.data import collections, mixtures, packing, pipeline, vocabularies
from sft_jax.data.collections import files

WEIGHTED_OPEN, WEIGHTED_CLOSE = "[[", "]]"
TOKEN_SEPARATOR = "|"
_GREEN, _RESET = "\x1b[32m", "\x1b[0m"
# Control characters would break the one-line token view.
_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})
# Counting is tf.data overhead per example; a few tasks at once overlap it.
_COUNT_THREADS = 4
# Tasks counted at once now: one while TFDS is mocked (see mock_tfds).
_count_threads = _COUNT_THREADS
# Random examples per split of a mocked TFDS dataset.
MOCK_EXAMPLES = 16
# Integer features of mocked examples are drawn below this (class labels below their number of
# classes), so that a label stored as a plain integer still indexes a short list of choices.
_MOCK_MAX_INT = 4

Example = Mapping[str, np.ndarray]


# ----- Tokens -----


def token_pieces(ids: Iterable[int], vocabulary: seqio.Vocabulary) -> list[str]:
  """Each token id decoded on its own; special ids by name (`<eos>`, `<|im_end|>`, `</s>`)."""
  named = {vocabulary.pad_id: "<pad>", vocabulary.eos_id: "<eos>", getattr(vocabulary, "unk_id", None): "<unk>"}
  pieces = []
  for token_id in map(int, ids):
    if isinstance(vocabulary, vocabularies.HFTokenizerVocabulary):
      # The vocabulary's own decode drops special tokens; here they are what the model sees.
      piece = vocabulary.tokenizer.decode([token_id], skip_special_tokens=False)
    elif isinstance(vocabulary, seqio.SentencePieceVocabulary):
      piece = vocabulary.tokenizer.id_to_piece(token_id)
    else:
      piece = named.get(token_id) or vocabulary.decode([token_id])
    pieces.append(piece.translate(_ESCAPES) if piece else f"<id {token_id}>")
  return pieces


def format_token_view(ids: Sequence[int], weights: Sequence[int], vocabulary: seqio.Vocabulary,
                      color: bool = False) -> str:
  """Tokens separated by `|`, runs of loss-weighted tokens in `[[...]]` (green when `color`)."""
  pieces = token_pieces(ids, vocabulary)
  runs = []
  for weighted, run in itertools.groupby(zip(pieces, weights), key=lambda pw: bool(pw[1])):
    text = TOKEN_SEPARATOR.join(piece for piece, _ in run)
    if weighted:
      text = f"{_GREEN}{text}{_RESET}" if color else f"{WEIGHTED_OPEN}{text}{WEIGHTED_CLOSE}"
    runs.append(text)
  return TOKEN_SEPARATOR.join(runs)


# ----- Examples -----


def _dataset(mixture_or_task_name: str, split: str, seed: int) -> tf.data.Dataset:
  # What the trainer reads: untrimmed, shuffled with the run's seed for training.
  return pipeline.get_dataset(mixture_or_task_name, sequence_length=None, split=split,
                              shuffle=split == "train", seed=seed, num_epochs=1, trim_output_features=False)


def _text(example: Example, key: str) -> str:
  value = example.get(key)
  return "(not kept)" if value is None else value.decode("utf-8", errors="replace")


def format_example(index: int, example: Example, vocabulary: seqio.Vocabulary, color: bool = False) -> str:
  """One example: rendered text, then its tokens with the loss-weighted ones marked."""
  targets = example["targets"]
  if "inputs" in example:
    inputs = example["inputs"]
    return "\n".join([
        f"--- example {index} ({len(inputs)} input tokens, {len(targets)} target tokens)",
        "[inputs]", _text(example, "inputs_pretokenized"),
        "[targets]", _text(example, "targets_pretokenized"),
        "[input tokens]", format_token_view(inputs, np.zeros_like(inputs), vocabulary, color),
        # Every target token, EOS included, is a training target.
        "[target tokens]", format_token_view(targets, np.ones_like(targets), vocabulary, color)])
  weights = example["loss_weights"]
  return "\n".join([
      f"--- example {index} ({len(targets)} tokens, {int(np.sum(weights > 0))} loss-weighted)",
      "[text]", _text(example, "targets_pretokenized"),
      "[tokens]", format_token_view(targets, weights, vocabulary, color)])


def format_examples(mixture_or_task_name: str, split: str, n: int, seed: int = 0, color: bool = False) -> str:
  """The first `n` examples of a mixture/task split: rendered text and token view."""
  examples = _dataset(mixture_or_task_name, split, seed).take(n).as_numpy_iterator()
  vocabulary = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
  return "\n".join(format_example(k, ex, vocabulary, color) for k, ex in enumerate(examples))


# ----- Counts -----


@dataclasses.dataclass(frozen=True)
class SplitCount:
  """The examples of one task split; `examples` is None for a stream that does not end."""

  task: str
  split: str
  examples: int | None


def count_examples(task_name: str, split: str, limit: int = 1000) -> SplitCount:
  """The size a task's source declares for `split`, else its examples counted up to `limit`."""
  source = seqio.get_mixture_or_task(task_name).source
  try:
    declared = source.num_input_examples(split)
  except KeyError:
    declared = None
  if declared is not None:
    return SplitCount(task_name, split, int(declared))
  # No declared size: a stream that outlasts `limit` examples is taken to be unlimited.
  dataset = source.get_dataset(split=split, shuffle=False).take(limit + 1)
  counted = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
  return SplitCount(task_name, split, None if counted > limit else counted)


def _task_count_line(name: str, split: str, limit: int) -> tuple[int | None, int | None, str]:
  """(count, validation count, text) of one task; a count is None for an unlimited stream.

  The validation count is that of an unlimited `split` (0 when there is nothing to add).
  """
  splits = seqio.get_mixture_or_task(name).splits
  if split not in splits:
    return 0, 0, f"no {split} split"
  count = count_examples(name, split, limit).examples
  if count is not None:
    return count, 0, str(count)
  text = f"unlimited (stream not exhausted after {limit} examples)"
  if split == "validation" or "validation" not in splits:
    return None, 0, text
  validation = count_examples(name, "validation", limit).examples
  return None, validation, text + f"; validation: {'unlimited' if validation is None else validation}"


def format_counts(mixture_or_task_name: str, split: str, limit: int = 1000) -> str:
  """Per-task example counts of `split`; unlimited streams also show their validation count."""
  names = mixtures.training_task_names(mixture_or_task_name)
  with futures.ThreadPoolExecutor(_count_threads) as pool:
    results = list(pool.map(lambda name: _task_count_line(name, split, limit), names))
  width = max(len(name) for name in names)
  lines = [f"=== example counts ({split})"]
  lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in zip(names, results)]
  if len(names) > 1:
    counts = [count for count, _, _ in results]
    validations = [validation for _, validation, _ in results]
    finite = sum(count for count in counts if count is not None)
    validation = "unlimited" if None in validations else str(sum(validations))
    if all(count is None for count in counts):
      total = f"unlimited; validation: {validation}"
    elif None in counts:
      total = f"unlimited ({finite} in the finite tasks; validation of the unlimited ones: {validation})"
    else:
      total = str(finite)
    lines.append(f"  total over {len(names)} tasks: {total}")
  return "\n".join(lines)


# ----- Packing -----


def _count(count: float, singular: str, plural: str = "") -> str:
  return f"{count:.0f} {singular if count == 1 else plural or singular + 's'}"


def _is_decoder_only(mixture_or_task_name: str) -> bool:
  # Rendered chats have targets and loss weights, no inputs.
  return "inputs" not in seqio.get_mixture_or_task(mixture_or_task_name).output_features


def packing_report(examples: Iterable[Example], *, batch_size: int, input_length: int | None,
                   target_length: int, num_batches: int = 3) -> str:
  """BestFitPacker on `examples`: per batch and in total, examples per row, filled slots, truncations.

  `input_length=None` packs decoder-only rows (see packing.py).
  """
  features = ("inputs", "targets", "loss_weights")
  packer = packing.BestFitPacker(({k: ex[k] for k in features if k in ex} for ex in examples),
                                 batch_size, input_length, target_length)
  shape = (f"decoder-only, length {target_length}" if input_length is None else
           f"input_length {input_length}, target_length {target_length}")
  lines = [f"=== packing (BestFitPacker, batch_size {batch_size}, {shape})"]
  tokens = slots = packed = 0.0
  for index, batch in enumerate(itertools.islice(packer, num_batches)):
    counts = packing.batch_counts(batch)
    tokens, slots, packed = tokens + counts["tokens"], slots + counts["slots"], packed + counts["examples"]
    lines.append(f"  batch {index}: {_count(batch_size, 'row')}, {_count(counts['examples'], 'example')} "
                 f"({counts['examples'] / batch_size:.2f} per row), {counts['tokens']:.0f}/{counts['slots']:.0f} "
                 f"token slots filled ({100 * counts['tokens'] / counts['slots']:.1f}%)")
  if not packer.batches_emitted:
    return "\n".join(lines + ["  no examples"])
  rows = packer.batches_emitted * batch_size
  read = packer.counts
  cut = [] if input_length is None else [_count(read.truncated_inputs, "input")]
  cut.append(_count(read.truncated_targets, "target"))
  lines.append(f"  total: {_count(packer.batches_emitted, 'batch', 'batches')}, {_count(rows, 'row')}, "
               f"{_count(packed, 'example')} ({packed / rows:.2f} per row), token efficiency "
               f"{100 * tokens / slots:.1f}%; of {read.examples} examples read: {' and '.join(cut)} "
               f"truncated, {read.dropped} dropped")
  return "\n".join(lines)


def format_packing(mixture_or_task_name: str, split: str, *, batch_size: int, input_length: int,
                   target_length: int, num_batches: int = 3, seed: int = 0, decoder_only: bool = False) -> str:
  """`packing_report` on a mixture/task split; tasks without inputs always pack decoder-only."""
  decoder_only = decoder_only or _is_decoder_only(mixture_or_task_name)
  return packing_report(_dataset(mixture_or_task_name, split, seed).as_numpy_iterator(), batch_size=batch_size,
                        input_length=None if decoder_only else input_length, target_length=target_length,
                        num_batches=num_batches)


# ----- Everything -----


@contextlib.contextmanager
def mock_tfds(enabled: bool = True, num_examples: int = MOCK_EXAMPLES) -> Iterator[None]:
  """While active, every TFDS dataset yields `num_examples` random examples of its features, per split.

  `tfds.testing.mock_data`: nothing is downloaded or prepared, and the text is random letters.
  With `enabled=False` it changes nothing.
  """
  global _count_threads
  if not enabled:
    yield
    return
  # mock_data swaps a fake file system in and out around every dataset it opens, which
  # breaks datasets opened from several threads at once.
  _count_threads = 1
  try:
    with tfds.testing.mock_data(num_examples=num_examples, max_value=_MOCK_MAX_INT):
      yield
  finally:
    _count_threads = _COUNT_THREADS


def register_inputs(modules: Sequence[str] = (), file_task_flags: Sequence[str] = (),
                    chat_template: str | None = None, tokenizer: str | None = None,
                    names: Sequence[str] = ()) -> list[str]:
  """Imports registration modules and registers `NAME=PATH:FMT` file tasks; returns their names.

  `chat_template` and `tokenizer` (a Hugging Face tokenizer.json or model directory; the
  default vocabulary otherwise) apply to the file tasks. Each of `names` not registered by then
  has the collection module that registers it imported (collections.registering_module).
  """
  for module in modules:
    importlib.import_module(module)
  for name in names:
    module = collections.registering_module(name)
    if module and name not in seqio.MixtureRegistry.names() and name not in seqio.TaskRegistry.names():
      importlib.import_module(module)
  vocabulary = vocabularies.get_vocabulary("hf", tokenizer) if tokenizer else None
  names = []
  for flag in file_task_flags:
    name, path, fmt = files.parse_file_task_flag(flag)
    files.register_file_task(name, path, fmt, chat_template=chat_template, vocabulary=vocabulary)
    names.append(name)
  return names


def inspect(mixture_or_task_name: str, split: str = "train", n: int = 5, *, seed: int = 0,
            batch_size: int = 8, input_length: int = 256, target_length: int = 64, num_batches: int = 3,
            count_limit: int = 1000, decoder_only: bool = False, color: bool = False) -> str:
  """The full report: n examples (text and tokens), per-task counts and packing statistics.

  `decoder_only` packs inputs/targets tasks as one sequence per example, as a decoder-only
  model reads them; tasks without inputs (rendered chats) always pack that way.
  """
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  vocabulary = provider.output_features["targets"].vocabulary
  # One stream for the examples shown and the batches packed: filling the shuffle buffers
  # of a many-task mixture is most of the cost.
  stream = _dataset(mixture_or_task_name, split, seed).as_numpy_iterator()
  shown = list(itertools.islice(stream, n))
  decoder_only = decoder_only or _is_decoder_only(mixture_or_task_name)
  return "\n\n".join([
      f"=== {mixture_or_task_name} ({split}): first {_count(len(shown), 'example')}",
      "\n".join(format_example(k, ex, vocabulary, color) for k, ex in enumerate(shown)),
      format_counts(mixture_or_task_name, split, count_limit),
      packing_report(itertools.chain(shown, stream), batch_size=batch_size,
                     input_length=None if decoder_only else input_length, target_length=target_length,
                     num_batches=num_batches),
  ])

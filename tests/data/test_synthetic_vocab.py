"""Tests for the shipped SentencePiece vocabulary of the synthetic tasks."""

from __future__ import annotations

import itertools

import pytest
import sentencepiece as spm

from sft_jax.data.collections import synthetic, synthetic_tasks as st, synthetic_vocab as sv

# The quickstart's packed lengths (gin_configs/runs/quickstart.gin); EOS takes one slot each.
QUICKSTART_INPUT_LENGTH, QUICKSTART_TARGET_LENGTH = 96, 16


@pytest.fixture(scope="module")
def processor() -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_file=sv.MODEL_PATH)


def _rendered(n: int = 30):
  """(task, first n examples) for every task and split, over all its phrasings."""
  for task in st.TASKS:
    for split in ("train", "test"):
      examples = synthetic.render_examples(task, task.templates + task.heldout_templates, split, 0)
      yield task, list(itertools.islice(examples, n))


def test_every_string_encodes_without_fallback_and_decodes_back(processor):
  for task, examples in _rendered():
    for example in examples:
      for text in [example["inputs"], example["targets"], *example["answer_choices"]]:
        ids = processor.encode(text)
        assert not any(processor.is_byte(i) or processor.is_unknown(i) for i in ids), (task.name, text)
        # A newline decodes with a space on each side (see synthetic_vocab); nothing else changes.
        assert processor.decode(ids) == text.replace("\n", " \n "), (task.name, text)


def test_targets_and_choices_round_trip_exactly(processor):
  """Exact match compares decoded predictions with targets, so targets must survive a round trip."""
  vocab = sv.vocabulary()
  for _, examples in _rendered(10):
    for example in examples:
      for text in [example["targets"], *example["answer_choices"]]:
        assert vocab.decode(vocab.encode(text)) == text


def test_examples_fit_the_quickstart_lengths(processor):
  for task, examples in _rendered():
    for example in examples:
      assert len(processor.encode(example["inputs"])) < QUICKSTART_INPUT_LENGTH, task.name
      assert len(processor.encode(example["targets"])) < QUICKSTART_TARGET_LENGTH, task.name


def test_numbers_letters_and_words_are_single_pieces(processor):
  for n in range(100):
    assert processor.encode(str(n), out_type=str) == [f"▁{n}"]
  # Spelled letters: one piece per letter, the same piece wherever the letter stands.
  assert processor.encode("c a t", out_type=str) == ["▁c", "▁a", "▁t"]
  assert processor.encode("List: 46, 41\nWhat", out_type=str) == ["▁List", ":", "▁46", ",", "▁41", "▁\n",
                                                                  "▁What"]
  for word in ("apple", "horse", "train", "Tom", "OPTIONS"):
    assert len(processor.encode(word)) == 1, word


def test_examples_are_about_three_times_shorter_than_bytes(processor):
  pieces = byte_count = 0
  for _, examples in _rendered(10):
    for example in examples:
      pieces += len(processor.encode(example["inputs"]))
      byte_count += len(example["inputs"].encode("utf-8"))
  assert byte_count / pieces > 2.5


def test_vocabulary_object_matches_the_model_file(processor):
  vocab = sv.vocabulary()
  assert vocab.vocab_size == sv.VOCAB_SIZE == processor.get_piece_size()
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (sv.PAD_ID, sv.EOS_ID, sv.UNK_ID)


def test_training_is_deterministic():
  lines = list(itertools.islice(sv.corpus_lines(), 40_000))
  first = sv.train_model_proto(iter(lines), 600, require_number_pieces=False)
  assert sv.train_model_proto(iter(lines), 600, require_number_pieces=False) == first


def test_shipped_model_matches_the_generator(processor):
  """Fails when the generator changed and the model file was not rebuilt."""
  with open(sv.MODEL_PATH, "rb") as f:
    assert sv.train_model_proto(sv.corpus_lines()) == f.read()

"""The SentencePiece vocabulary of the synthetic tasks, trained on their own rendered text.

Why not bytes: a byte model spends most of its compute spelling out instructions. Trained on
the generator's output, a 1536-piece BPE model writes each instruction word, list word and
number from 0 to 99 as one piece, so an example is about 3x fewer tokens and a from-scratch
CPU model sees that many more examples in the same minutes. Letter-level tasks spell their
words out (`c a t`), which makes every letter its own piece. Unknown characters fall back to
bytes, and normalization changes nothing but newlines (below), so every string without a
newline decodes back to itself.

The model file ships with the package (`synthetic.spm.model`) so that training and evaluation
read identical pieces on every machine; `python -m sft_jax.data.collections.synthetic_vocab`
rebuilds it after the generator changes.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import tempfile
from typing import Iterator

import seqio
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from sft_jax.data.collections import synthetic_tasks

MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.spm.model")
VOCAB_SIZE = 1536
# Punctuation is always its own piece, so `46,` and `46` are the same number piece.
_PUNCTUATION = ",.:;?!-=[]()"
# Identity normalization, except that a newline gains a space on each side: it becomes its own
# piece and the next word gets the same word-initial piece as anywhere else (`▁\n`, `▁What`),
# instead of a second spelling of every line-initial word. So a decoded newline reads " \n ".
_NORMALIZATION_RULES = "0A\t20 0A 20\n"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# Examples per template set rendered into the training corpus.
_CORPUS_EXAMPLES = 600
_CORPUS_SEED = 12345


def corpus_lines() -> Iterator[str]:
  """Every task's definition and rendered examples (inputs, targets, answer choices)."""
  for task in synthetic_tasks.TASKS:
    yield task.definition
    for templates in (task.templates, task.heldout_templates):
      stream = synthetic_tasks.instances(task, "train", _CORPUS_SEED)
      for instance, template in zip(itertools.islice(stream, _CORPUS_EXAMPLES), itertools.cycle(templates)):
        yield template.render(instance, definition=task.definition)
        yield instance["target"]
        yield from instance.get("answer_choices") or ()


def train_model_proto(lines: Iterator[str], vocab_size: int = VOCAB_SIZE,
                      require_number_pieces: bool = True) -> bytes:
  """Trains the BPE SentencePiece model on `lines`; returns the serialized model."""
  model = io.BytesIO()
  with tempfile.TemporaryDirectory(prefix="synthetic_spm") as tmp:
    rules = os.path.join(tmp, "rules.tsv")
    with open(rules, "w") as f:
      f.write(_NORMALIZATION_RULES)
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=model, vocab_size=vocab_size, model_type="bpe",
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        normalization_rule_tsv=rules, remove_extra_whitespaces=False,
        user_defined_symbols=list(_PUNCTUATION), byte_fallback=True, character_coverage=1.0,
        split_digits=False, max_sentencepiece_length=16,
        # One thread: the same corpus gives the same model.
        num_threads=1, minloglevel=2)
  proto = _drop_rules_path(model.getvalue())
  if require_number_pieces:
    _check_numbers_are_pieces(proto)
  return proto


def _drop_rules_path(proto: bytes) -> bytes:
  """Clears the temporary rules-file path the trainer records, so a rebuild is byte-identical.

  The rules themselves stay compiled into the normalizer's charsmap.
  """
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString(proto)
  model.normalizer_spec.ClearField("normalization_rule_tsv")
  return model.SerializeToString()


def _check_numbers_are_pieces(proto: bytes) -> None:
  """Raises unless every number 0..99 after a space is one piece (the tasks rely on it)."""
  processor = spm.SentencePieceProcessor(model_proto=proto)
  split = [n for n in range(100) if len(processor.encode(str(n))) != 1]
  if split:
    raise ValueError(f"synthetic vocabulary splits the numbers {split}; raise VOCAB_SIZE or the corpus size")


@functools.lru_cache(maxsize=None)
def vocabulary() -> seqio.SentencePieceVocabulary:
  """The synthetic tasks' vocabulary (the shipped model file)."""
  if not os.path.exists(MODEL_PATH):
    raise FileNotFoundError(f"{MODEL_PATH} is missing; rebuild it with "
                            "`python -m sft_jax.data.collections.synthetic_vocab`")
  return seqio.SentencePieceVocabulary(MODEL_PATH)


def main() -> None:
  """Rebuilds the shipped model file from the current generator."""
  proto = train_model_proto(corpus_lines())
  with open(MODEL_PATH, "wb") as f:
    f.write(proto)
  print(f"wrote {MODEL_PATH} ({len(proto)} bytes, {VOCAB_SIZE} pieces)")


if __name__ == "__main__":
  main()

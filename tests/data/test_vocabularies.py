"""Vocabularies: the HF `tokenizers` wrapper against the library itself, special ids, get_vocabulary."""

import json
import pickle

import numpy as np
import pytest
import seqio
import tensorflow as tf

from sft_jax.data import vocabularies

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "Translate the sentence into French: the cat sleeps.",
    "Answer the question: what is two plus three? Five.",
    "Write a haiku about the sea, the wind and the moon.",
    "Naïve café owners serve crème brûlée ☕ every morning.",
]
TEXTS = ["the cat sleeps", "What is 2 + 3?\nFive.", "naïve ☕ café", "", "  leading spaces\n\n"]


def _write_tokenizer(path, specials=("<s>", "</s>", "<pad>")):
  """A byte-level BPE trained on CORPUS whose post-processor would prepend <s> if asked to."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=320, special_tokens=list(specials), show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  tok.save(str(path))
  return tok


def _model_dir(tmp_path, config, specials=("<s>", "</s>", "<pad>"), special_tokens_map=None):
  tok = _write_tokenizer(tmp_path / "tokenizer.json", specials)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  if special_tokens_map is not None:
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special_tokens_map))
  return tok


def test_encode_decode_match_tokenizers_library(tmp_path):
  tok = _write_tokenizer(tmp_path / "tokenizer.json")
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"), eos_id=tok.token_to_id("</s>"))
  bos = tok.token_to_id("<s>")
  for text in TEXTS:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert vocab.encode(text) == ids
    # The tokenizer's own post-processor would add BOS; the vocabulary never does.
    assert tok.encode(text).ids == [bos] + ids
    assert vocab.decode(ids) == tok.decode(ids) == text
  assert vocab.vocab_size == tok.get_vocab_size(with_added_tokens=True)
  assert vocab.unk_id is None  # byte-level BPE has no unknown token


def test_decode_stops_at_eos_and_drops_padding(tmp_path):
  tok = _model_dir(tmp_path, {"eos_token": "</s>", "pad_token": "<pad>"})
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path))
  ids = vocab.encode("the cat sleeps")
  tail = vocab.encode(" and more")
  assert vocab.decode(ids + [vocab.eos_id] + tail + [vocab.pad_id] * 3) == "the cat sleeps"
  special = vocabularies.HFTokenizerVocabulary(str(tmp_path), decode_special_tokens=True)
  bos = tok.token_to_id("<s>")
  assert special.decode([bos] + ids) == "<s>the cat sleeps"


def test_encode_tf_and_decode_tf_equal_python(tmp_path):
  _model_dir(tmp_path, {"eos_token": "</s>"})
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path))
  expected = [vocab.encode(t) for t in TEXTS]

  scalar = vocab.encode_tf(tf.constant(TEXTS[1]))
  assert scalar.dtype == tf.int32 and scalar.shape.rank == 1
  assert scalar.numpy().tolist() == expected[1]

  batch = vocab.encode_tf(tf.constant(TEXTS))
  assert isinstance(batch, tf.RaggedTensor) and batch.shape.rank == 2
  assert batch.to_list() == expected

  # Graph mode, as inside a seqio preprocessor: static shape [None].
  ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)
  assert ds.element_spec.shape.as_list() == [None]
  assert [x.tolist() for x in ds.as_numpy_iterator()] == expected

  assert vocab.decode_tf(tf.constant(expected[1], tf.int32)).numpy().decode() == TEXTS[1]
  width = max(map(len, expected)) + 1
  padded = np.full((len(TEXTS), width), vocab.pad_id, np.int32)
  for row, ids in enumerate(expected):
    padded[row, :len(ids)] = ids
    padded[row, len(ids)] = vocab.eos_id
  decoded = vocab.decode_tf(tf.constant(padded))
  assert decoded.shape == (len(TEXTS),)
  assert [s.decode() for s in decoded.numpy()] == [vocab.decode(r) for r in padded.tolist()] == TEXTS
  assert vocab.decode_tf(tf.constant(padded[None])).shape == (1, len(TEXTS))


def test_seqio_tokenize_preprocessor(tmp_path):
  _model_dir(tmp_path, {"eos_token": "</s>"})
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path))
  ds = tf.data.Dataset.from_tensor_slices({"targets": TEXTS[:3]})
  ds = seqio.preprocessors.tokenize(ds, {"targets": seqio.Feature(vocabulary=vocab, add_eos=True)})
  out = list(ds.as_numpy_iterator())
  assert [x["targets"].tolist() for x in out] == [vocab.encode(t) for t in TEXTS[:3]]
  assert [x["targets_pretokenized"].decode() for x in out] == TEXTS[:3]


def test_pad_falls_back_to_eos_when_tokenizer_has_none(tmp_path):
  tok = _model_dir(tmp_path, {"bos_token": "<s>", "eos_token": "</s>"}, specials=("<s>", "</s>"))
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path))
  assert vocab.eos_id == tok.token_to_id("</s>")
  assert vocab.pad_id == vocab.eos_id
  assert vocab.bos_id == tok.token_to_id("<s>")
  assert vocab.bos_id not in vocab.encode("the cat")


def test_pad_token_from_config_or_special_tokens_map(tmp_path):
  added = {"__type": "AddedToken", "content": "</s>", "lstrip": False, "rstrip": False}
  tok = _model_dir(tmp_path, {"pad_token": "<pad>"},
                   special_tokens_map={"eos_token": added, "pad_token": "<s>"})
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path))
  assert vocab.eos_id == tok.token_to_id("</s>")  # only in special_tokens_map.json, as an AddedToken dict
  assert vocab.pad_id == tok.token_to_id("<pad>")  # tokenizer_config.json wins
  assert vocab.pad_id != vocab.eos_id


def test_explicit_ids_and_errors(tmp_path):
  _model_dir(tmp_path, {"eos_token": "</s>"})
  vocab = vocabularies.HFTokenizerVocabulary(str(tmp_path), eos_id=5, pad_id=7)
  assert (vocab.eos_id, vocab.pad_id) == (5, 7)
  with pytest.raises(ValueError, match="no EOS token"):
    vocabularies.HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match=r"pad_id=100000 is outside"):
    vocabularies.HFTokenizerVocabulary(str(tmp_path), pad_id=100_000)
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    vocabularies.HFTokenizerVocabulary(str(tmp_path / "missing"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot_id|>"}))
  with pytest.raises(ValueError, match=r"eos_token '<\|eot_id\|>' .* not in tokenizer.json"):
    vocabularies.HFTokenizerVocabulary(str(tmp_path))


def test_equality_hash_and_pickle(tmp_path):
  _model_dir(tmp_path, {"eos_token": "</s>"})
  a = vocabularies.HFTokenizerVocabulary(str(tmp_path))
  b = vocabularies.HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"), eos_id=a.eos_id)
  assert a == b and hash(a) == hash(b)
  assert a != vocabularies.HFTokenizerVocabulary(str(tmp_path), pad_id=a.eos_id + 1)
  assert a != seqio.ByteVocabulary()
  restored = pickle.loads(pickle.dumps(a))
  assert restored == a and restored.encode("the cat") == a.encode("the cat")


def test_get_vocabulary_kinds(tmp_path):
  assert vocabularies.get_vocabulary() == seqio.ByteVocabulary()
  _model_dir(tmp_path, {"eos_token": "</s>"})
  hf = vocabularies.get_vocabulary("hf", path=str(tmp_path))
  assert hf == vocabularies.HFTokenizerVocabulary(str(tmp_path))
  assert vocabularies.get_vocabulary("hf", path=str(tmp_path), pad_id=3).pad_id == 3

  sentencepiece = pytest.importorskip("sentencepiece")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS * 4), model_prefix=str(tmp_path / "sp"), vocab_size=60,
      hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  sp = vocabularies.get_vocabulary("sentencepiece", path=str(tmp_path / "sp.model"))
  assert isinstance(sp, seqio.SentencePieceVocabulary)
  assert sp.decode(sp.encode("the cat sleeps")) == "the cat sleeps"

  with pytest.raises(ValueError, match="needs path"):
    vocabularies.get_vocabulary("hf")
  with pytest.raises(ValueError, match="unknown vocabulary kind 'wordpiece'"):
    vocabularies.get_vocabulary("wordpiece", path="x")
  with pytest.raises(ValueError, match="apply to kind 'hf' only"):
    vocabularies.get_vocabulary("byte", eos_id=1)


def test_a_run_directory_keeps_the_vocabulary_it_was_written_with(tmp_path):
  # hf_io.write_vocabulary puts the files where hf_io.load_vocabulary (score.py, the lm-eval
  # adapter) reads a model directory's tokenizer; the vocabulary read back encodes identically.
  from sft_jax.data.collections import synthetic_vocab
  from sft_jax.models import hf_io

  spm = seqio.SentencePieceVocabulary(synthetic_vocab.MODEL_PATH, extra_ids=3)
  _write_tokenizer(tmp_path / "tokenizer.json")
  hf = vocabularies.HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"), eos_id=1, pad_id=2)
  for name, vocabulary, files in (("spm", spm, ["spiece.model", "tokenizer_config.json"]),
                                  ("hf", hf, ["tokenizer.json", "tokenizer_config.json"]),
                                  ("byte", vocabularies.get_vocabulary("byte"), [])):
    run = tmp_path / name
    assert hf_io.write_vocabulary(vocabulary, str(run)) == files
    loaded = hf_io.load_vocabulary(str(run / "hf"))
    if not files:
      assert loaded is None
      continue
    assert (loaded.vocab_size, loaded.eos_id, loaded.pad_id) == (vocabulary.vocab_size, vocabulary.eos_id,
                                                                  vocabulary.pad_id)
    for text in TEXTS:
      assert loaded.encode(text) == vocabulary.encode(text)

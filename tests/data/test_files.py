"""File tasks: local files registered as seqio Tasks and read back exactly through seqio."""

from __future__ import annotations

import json

import gin
import numpy as np
import pytest
import seqio

from sft_jax import config
from sft_jax.data import chat, formats, pipeline, preprocessors, templates, vocabularies
from sft_jax.data.collections import files
from sft_jax.evaluation import metrics

tokenizers = pytest.importorskip("tokenizers")

ALPACA = [
    {"instruction": "Reverse the word.", "input": "abc", "output": "cba", "id": "a0"},
    {"instruction": "Is the sky blue?", "output": "yes", "answer_choices": ["yes", "no"], "id": "a1"},
    {"instruction": "Say hi", "input": "", "output": "hi there", "id": "a2"},
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "5"},
]
SUPERNI_TASK = {
    "Definition": ["Reverse the word"],
    "Positive Examples": [{"input": "ab", "output": "ba", "explanation": "Reversed."}],
    "Negative Examples": [],
    "Instances": [{"id": "task001-1", "input": "cat", "output": ["tac"]},
                  {"id": "task001-2", "input": "dog", "output": ["god"]}],
}
WORDS = ["[UNK]", "system", "user", "assistant", "\n", " ", ".", "!", "Be", "brief", "Hi", "Hello", "Add", "2",
         "and", "3", "5", "Say", "hi", "there"]


@pytest.fixture
def register():
  """register_file_task, removing every task it registered after the test."""
  names = []

  def _register(name, *args, **kwargs):
    names.append(name)
    return files.register_file_task(name, *args, **kwargs)

  yield _register
  for name in names:
    seqio.TaskRegistry.remove(name)


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _read(name, split="train"):
  dataset = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split, shuffle=False,
                                                        num_epochs=1)
  return list(dataset.as_numpy_iterator())


def _byte_ids(text):
  # seqio's ByteVocabulary: byte b is id b + 3, then EOS (1).
  return [b + 3 for b in text.encode("utf-8")] + [1]


def _hf_vocab(tmp_path):
  """A word-level tokenizer with the ChatML special tokens, ending turns with <|im_end|>."""
  model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\w+|[^\w\s]+|\s+"), behavior="isolated")
  tok.decoder = tokenizers.decoders.Fuse()
  tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
  path = tmp_path / "tok"
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
  return vocabularies.HFTokenizerVocabulary(str(path))


# ----- Reading back -----


def test_alpaca_file_reads_back_exact_strings_and_tokens(tmp_path, register):
  path = _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
  task = register("files_test.alpaca", path, "alpaca")
  examples = _read("files_test.alpaca")
  assert [ex["inputs_pretokenized"].decode() for ex in examples] == [
      "Reverse the word.\n\nabc", "Is the sky blue?", "Say hi"]
  assert [ex["targets_pretokenized"].decode() for ex in examples] == ["cba", "yes", "hi there"]
  assert examples[0]["inputs"].tolist() == _byte_ids("Reverse the word.\n\nabc")
  assert examples[0]["targets"].tolist() == _byte_ids("cba")
  assert [ex["answer_choices"].tolist() for ex in examples] == [[], [b"yes", b"no"], []]
  assert [ex["id"] for ex in examples] == [b"a0", b"a1", b"a2"]
  assert task.splits == ("train",) and task.metric_fns == [metrics.exact_match]
  assert task.source.num_input_examples("train") == 3


def test_superni_file_with_superni_template(tmp_path, register):
  path = tmp_path / "task001_reverse.json"
  path.write_text(json.dumps(SUPERNI_TASK))
  register("files_test.superni", str(path), "superni", template=templates.SuperNITemplate(),
           metrics=("exact_match", "accuracy"))
  examples = _read("files_test.superni")
  # The Tk-Instruct encoding, written out by hand.
  assert examples[0]["inputs_pretokenized"].decode() == (
      "Definition: Reverse the word.\n\n"
      " Positive Example 1 -\nInput: ab.\n Output: ba.\n\n"
      "Now complete the following example -\nInput: cat.\nOutput: ")
  assert [ex["targets_pretokenized"].decode() for ex in examples] == ["tac", "god"]
  assert examples[1]["inputs"].tolist() == _byte_ids(examples[1]["inputs_pretokenized"].decode())
  assert examples[0]["template"] == b"superni_def_pos2_neg0"
  task = seqio.get_mixture_or_task("files_test.superni")
  assert task.metric_fns == [metrics.exact_match, metrics.accuracy]


def test_chat_without_template_is_flattened_for_encoder_decoder(tmp_path, register):
  path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": MESSAGES, "id": 7}])
  register("files_test.flat", path, "messages")
  [example] = _read("files_test.flat")
  assert example["inputs_pretokenized"].decode() == "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Add 2 and 3."
  assert example["targets_pretokenized"].decode() == "5"
  assert example["targets"].tolist() == _byte_ids("5")


def test_chat_with_chat_template_has_render_chat_weights(tmp_path, register):
  vocab = _hf_vocab(tmp_path)
  unanswered = MESSAGES + [{"role": "user", "content": "Hi"}]  # a trailing turn has nothing to learn
  path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in (MESSAGES, MESSAGES[1:3], unanswered)])
  task = register("files_test.chatml", path, "messages", chat_template="chatml", vocabulary=vocab)
  assert set(task.output_features) == {"targets", "loss_weights"}
  examples = _read("files_test.chatml")
  assert len(examples) == 3
  for example, messages in zip(examples, [MESSAGES, MESSAGES[1:3], MESSAGES]):
    expected = chat.render_chat(messages, "chatml", vocab)
    np.testing.assert_array_equal(example["targets"], expected.token_ids)
    np.testing.assert_array_equal(example["loss_weights"], expected.loss_weights)
    assert example["targets_pretokenized"].decode() == expected.text
  # Hand check of the short one: weights on the reply and its turn-end token only.
  tokens = [vocab.tokenizer.id_to_token(int(i)) for i in examples[1]["targets"]]
  weighted = [t for t, w in zip(tokens, examples[1]["loss_weights"]) if w]
  assert weighted == ["Hello", "!", "<|im_end|>"]


def test_single_turn_examples_with_chat_template_are_user_assistant_chats(tmp_path, register):
  vocab = _hf_vocab(tmp_path)
  path = _write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi", "output": "hi there"}])
  register("files_test.alpaca_chat", path, "alpaca", chat_template="chatml", vocabulary=vocab)
  [example] = _read("files_test.alpaca_chat")
  expected = chat.render_chat(preprocessors.single_turn_chat("Say hi", "hi there"), "chatml", vocab)
  np.testing.assert_array_equal(example["targets"], expected.token_ids)
  np.testing.assert_array_equal(example["loss_weights"], expected.loss_weights)


def test_file_task_trains_through_the_pipeline(tmp_path, register):
  path = _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
  register("files_test.pipeline", path, "alpaca")
  config = pipeline.InputConfig("files_test.pipeline", batch_size=2, input_length=32, target_length=16)
  batch = next(pipeline.TrainInput(config))
  assert batch["encoder_input_tokens"].shape == (2, 32)
  # Training repeats the file; every packed target is one of its targets.
  targets = {tuple(_byte_ids(r["output"])) for r in ALPACA}
  for row_tokens, row_segments in zip(batch["decoder_target_tokens"], batch["decoder_segment_ids"]):
    for segment in range(1, row_segments.max() + 1):
      assert tuple(row_tokens[row_segments == segment].tolist()) in targets


# ----- Splits -----


def _ids(name, split):
  return [ex["id"].decode() for ex in _read(name, split)]


def test_fraction_split_is_deterministic_disjoint_complete_and_order_free(tmp_path, register):
  first = _write_jsonl(tmp_path / "first.jsonl", [
      {"instruction": f"q{i}", "output": f"a{i}", "id": f"e{i}"} for i in range(100)])
  second = _write_jsonl(tmp_path / "second.jsonl", [
      {"instruction": f"q{i}", "output": f"a{i}", "id": f"e{i}"} for i in range(100, 200)])
  register("files_test.split_ab", [first, second], "alpaca", validation_fraction=0.25)
  register("files_test.split_ba", [second, first], "alpaca", validation_fraction=0.25)
  register("files_test.split_half", [first, second], "alpaca", validation_fraction=0.5)
  train, validation = set(_ids("files_test.split_ab", "train")), set(_ids("files_test.split_ab", "validation"))
  assert not train & validation and train | validation == {f"e{i}" for i in range(200)}
  assert 30 < len(validation) < 70  # 50 expected
  assert set(_ids("files_test.split_ba", "validation")) == validation
  assert set(_ids("files_test.split_ba", "train")) == train
  # A larger fraction only moves more examples out of train.
  assert validation < set(_ids("files_test.split_half", "validation"))
  assert _ids("files_test.split_ab", "validation") == _ids("files_test.split_ab", "validation")


def test_fraction_split_by_content_keeps_duplicates_together(tmp_path, register):
  records = [{"instruction": f"q{i % 50}", "output": "a"} for i in range(100)]  # each record twice
  register("files_test.dupes", _write_jsonl(tmp_path / "d.jsonl", records), "alpaca", validation_fraction=0.3)
  train = [ex["inputs_pretokenized"] for ex in _read("files_test.dupes", "train")]
  validation = [ex["inputs_pretokenized"] for ex in _read("files_test.dupes", "validation")]
  assert len(train) + len(validation) == 100 and not set(train) & set(validation)
  assert validation and all(validation.count(x) == 2 for x in validation)


def test_split_by_file(tmp_path, register):
  train = _write_jsonl(tmp_path / "train.jsonl", ALPACA[:2])
  dev = _write_jsonl(tmp_path / "dev.jsonl", ALPACA[2:])
  task = register("files_test.by_file", None, "alpaca", splits={"train": train, "validation": [dev]})
  assert task.splits == ("train", "validation")
  assert _ids("files_test.by_file", "train") == ["a0", "a1"]
  assert _ids("files_test.by_file", "validation") == ["a2"]


def test_glob_paths_are_sorted(tmp_path, register):
  _write_jsonl(tmp_path / "part-1.jsonl", ALPACA[1:])
  _write_jsonl(tmp_path / "part-0.jsonl", ALPACA[:1])
  register("files_test.glob", str(tmp_path / "part-*.jsonl"), "alpaca")
  assert _ids("files_test.glob", "train") == ["a0", "a1", "a2"]


def test_template_list_draws_one_template_per_example(tmp_path, register):
  path = _write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"q{i}", "output": "a", "id": i} for i in range(20)])
  pair = [templates.Template("plain", "{input}"), templates.Template("ask", "Question: {input}")]
  register("files_test.templates", path, "alpaca", template=pair)
  examples = _read("files_test.templates")
  for ex in examples:
    name, inputs = ex["template"].decode(), ex["inputs_pretokenized"].decode()
    assert inputs.startswith("Question: ") == (name == "ask")
  assert {ex["template"] for ex in examples} == {b"plain", b"ask"}


# ----- Errors -----


def test_bad_record_names_file_and_line_at_first_read(tmp_path, register):
  path = _write_jsonl(tmp_path / "bad.jsonl", [ALPACA[0], {"instruction": "no output"}, ALPACA[2]])
  register("files_test.bad", path, "alpaca")
  with pytest.raises(formats.FormatError, match=r"bad\.jsonl:2: output: missing field"):
    _read("files_test.bad")
  register("files_test.skip", path, "alpaca", skip_invalid=True)
  assert _ids("files_test.skip", "train") == ["a0", "a2"]


def test_template_error_names_the_file(tmp_path, register):
  path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": MESSAGES}])
  register("files_test.chat_template_mismatch", path, "messages", template=templates.SuperNITemplate())
  with pytest.raises(ValueError, match=r"chat\.jsonl: example 0: template .* single-turn"):
    _read("files_test.chat_template_mismatch")
  alpaca = _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
  register("files_test.missing_field", alpaca, "alpaca", template=templates.SuperNITemplate())
  with pytest.raises(ValueError, match=r"alpaca\.jsonl: example 0 \(id 'a0'\): template 'superni_def_pos2_neg0': "
                     r"example has no field 'definition'"):
    _read("files_test.missing_field")


def test_registration_errors(tmp_path, register):
  path = _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
  with pytest.raises(ValueError, match=r"unknown metric 'bleu'; known metrics: accuracy, exact_match"):
    register("files_test.metric", path, "alpaca", metrics=("exact_match", "bleu"))
  assert "files_test.metric" not in seqio.TaskRegistry.names()
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    register("files_test.missing", str(tmp_path / "missing.jsonl"), "alpaca")
  with pytest.raises(FileNotFoundError, match="no file matches"):
    register("files_test.missing", str(tmp_path / "*.json"), "alpaca")
  with pytest.raises(ValueError, match="unknown format 'csv'"):
    register("files_test.fmt", path, "csv")
  with pytest.raises(ValueError, match="either paths or splits"):
    register("files_test.both", path, "alpaca", splits={"train": path})
  with pytest.raises(ValueError, match="does not work with vocabulary"):
    register("files_test.byte_chatml", path, "alpaca", chat_template="chatml")  # bytes have no <|im_start|>


def test_duplicate_name_is_an_error_unless_overwrite(tmp_path, register):
  path = _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
  register("files_test.twice", path, "alpaca")
  with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
    register("files_test.twice", path, "alpaca")
  other = _write_jsonl(tmp_path / "other.jsonl", ALPACA[:1])
  register("files_test.twice", other, "alpaca", overwrite=True)
  assert _ids("files_test.twice", "train") == ["a0"]


# ----- gin -----


def test_one_gin_line_registers_file_tasks(tmp_path):
  task_file = tmp_path / "task001_reverse.json"
  task_file.write_text(json.dumps(SUPERNI_TASK))
  alpaca = _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
  gin.clear_config()
  try:
    alpaca_task = f"{{'name': 'files_test.gin_alpaca', 'paths': '{alpaca}', 'fmt': 'alpaca'}}"
    superni_task = (f"{{'name': 'files_test.gin_superni', 'paths': ['{task_file}'], 'fmt': 'superni', "
                    "'template': @SuperNITemplate(), 'metrics': ['exact_match']}")
    run_file = tmp_path / "run.gin"
    run_file.write_text("import sft_jax.data.collections.files\n"
                        f"file_tasks.tasks = [{alpaca_task}, {superni_task}]\n")  # the one line
    config.parse_gin_flags([f"--gin_file={run_file}"])  # as every tool does: parse, then finalize
    assert _ids("files_test.gin_alpaca", "train") == ["a0", "a1", "a2"]
    [first, _] = _read("files_test.gin_superni")
    assert first["inputs_pretokenized"].decode().startswith("Definition: Reverse the word.\n\n Positive Example 1")
  finally:
    gin.clear_config()
    for name in ("files_test.gin_alpaca", "files_test.gin_superni"):
      seqio.TaskRegistry.remove(name)


def test_file_tasks_rejects_unknown_keys(tmp_path):
  with pytest.raises(ValueError, match=r"unknown keys \['format'\]"):
    files.file_tasks([{"name": "files_test.keys", "paths": "x", "fmt": "alpaca", "format": "alpaca"}])

"""Source-file readers: every format read back exactly, and every malformed record named by file:line."""

from __future__ import annotations

import gzip
import json
import logging
import re

import pytest

from sft_jax.data import formats
from sft_jax.data.formats import FormatError, read_examples, read_examples_with_stats


def _write_jsonl(path, records, compress=False):
  text = "".join(json.dumps(r) + "\n" for r in records)
  data = gzip.compress(text.encode()) if compress else text.encode()
  path.write_bytes(data)
  return path


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return path


def _write_json(path, value):
  path.write_text(json.dumps(value, indent=2))
  return path


def _error(path, fmt, **kwargs) -> str:
  with pytest.raises(FormatError) as err:
    list(read_examples(path, fmt, **kwargs))
  return str(err.value)


# ----- Super-NaturalInstructions -----

_DEMO = {"input": "Sentence: I love it.", "output": "positive", "explanation": "Love is positive."}
_NEG_DEMO = {"input": "Sentence: Awful.", "output": "happy", "explanation": "Not a label."}


def _superni_task(instances):
  return {
      "Contributors": ["A. Author"],
      "Source": ["sst2"],
      "Categories": ["Sentiment Analysis"],
      "Definition": ["Classify the sentiment of the sentence as positive or negative."],
      "Positive Examples": [_DEMO],
      "Negative Examples": [_NEG_DEMO],
      "Instances": instances,
  }


def test_superni_yields_one_example_per_instance_with_the_rendering_fields(tmp_path):
  path = _write_json(tmp_path / "task363_sst2_polarity.json", _superni_task([
      {"id": "task363-1", "input": "Sentence: Great film.", "output": ["positive"]},
      {"id": "task363-2", "input": "Sentence: Dull.", "output": ["negative", "bad"]},
  ]))
  shared = {
      "task": "task363_sst2_polarity",
      "definition": "Classify the sentiment of the sentence as positive or negative.",
      "positive_examples": [_DEMO],
      "negative_examples": [_NEG_DEMO],
  }
  assert list(read_examples(path, "superni")) == [
      {"inputs": "Sentence: Great film.", "targets": "positive", "references": ["positive"],
       "id": "task363-1", **shared},
      {"inputs": "Sentence: Dull.", "targets": "negative", "references": ["negative", "bad"],
       "id": "task363-2", **shared},
  ]


def test_superni_gzip_task_is_named_without_its_suffixes(tmp_path):
  path = tmp_path / "task001_demo.json.gz"
  path.write_bytes(gzip.compress(json.dumps(_superni_task([{"id": "1", "input": "x", "output": ["y"]}])).encode()))
  [example] = read_examples(path, "superni")
  assert example["task"] == "task001_demo" and example["targets"] == "y"


def test_superni_instance_without_outputs_is_invalid_and_skippable(tmp_path):
  path = _write_json(tmp_path / "task1.json", _superni_task([
      {"id": "a", "input": "x", "output": []},
      {"id": "b", "input": "x", "output": ["y"]},
      {"id": "c", "input": "x", "output": [" "]},
  ]))
  assert _error(path, "superni") == f"{path}: Instances[0].output: empty list, expected at least one output"
  examples, stats = read_examples_with_stats(path, "superni", skip_invalid=True)
  assert [e["id"] for e in examples] == ["b"]
  assert (stats.examples, stats.skipped) == (1, 2)
  assert stats.first_error == f"{path}: Instances[0].output: empty list, expected at least one output"


def test_superni_broken_header_fails_the_whole_file_even_when_skipping(tmp_path):
  task = _superni_task([{"id": "a", "input": "x", "output": ["y"]}])
  del task["Definition"]
  path = _write_json(tmp_path / "task1.json", task)
  assert _error(path, "superni", skip_invalid=True) == f"{path}: Definition: missing field"
  task["Definition"] = ["d"]
  task["Positive Examples"] = [{"input": "x", "output": 3}]
  _write_json(path, task)
  assert _error(path, "superni") == f"{path}: Positive Examples[0].output: expected a string, got int"


# ----- Alpaca, Dolly, prompt/completion -----

_ALPACA = [
    {"instruction": "Give a synonym.", "input": "happy", "output": "glad"},
    {"instruction": "Name a prime.", "input": "", "output": "7"},
    {"instruction": "Say hi.", "input": "  ", "output": "hi"},
]
_ALPACA_EXPECTED = [
    {"inputs": "Give a synonym.\n\nhappy", "targets": "glad"},
    {"inputs": "Name a prime.", "targets": "7"},
    {"inputs": "Say hi.", "targets": "hi"},
]


def test_alpaca_json_list(tmp_path):
  path = _write_json(tmp_path / "alpaca_data.json", _ALPACA)
  assert list(read_examples(path, "alpaca")) == _ALPACA_EXPECTED


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz", "data.bin"])
@pytest.mark.parametrize("compress", [False, True])
def test_alpaca_jsonl_plain_or_gzip_whatever_the_name(tmp_path, name, compress):
  path = _write_jsonl(tmp_path / name, _ALPACA, compress=compress)
  assert list(read_examples(path, "alpaca")) == _ALPACA_EXPECTED


def test_json_list_after_blank_lines_and_a_byte_order_mark(tmp_path):
  path = tmp_path / "data.json"
  path.write_bytes(b"\xef\xbb\xbf\n  \n  " + json.dumps(_ALPACA).encode())
  assert list(read_examples(path, "alpaca")) == _ALPACA_EXPECTED


def test_dolly_context_and_category(tmp_path):
  path = _write_jsonl(tmp_path / "dolly.jsonl", [
      {"instruction": "Who wrote it?", "context": "Hamlet is a play by Shakespeare.", "response": "Shakespeare",
       "category": "closed_qa"},
      {"instruction": "Suggest a name.", "context": "", "response": "Rex", "category": "brainstorming"},
  ])
  assert list(read_examples(path, "dolly")) == [
      {"inputs": "Who wrote it?\n\nHamlet is a play by Shakespeare.", "targets": "Shakespeare", "task": "closed_qa"},
      {"inputs": "Suggest a name.", "targets": "Rex", "task": "brainstorming"},
  ]


def test_prompt_completion_carries_id_task_and_answer_choices(tmp_path):
  path = _write_jsonl(tmp_path / "pc.jsonl", [
      {"prompt": "2+2=", "completion": "4"},
      {"prompt": "Is the sky blue?", "completion": "yes", "id": 7, "task": "qa", "answer_choices": ["yes", "no"]},
  ])
  assert list(read_examples(path, "prompt_completion")) == [
      {"inputs": "2+2=", "targets": "4"},
      {"inputs": "Is the sky blue?", "targets": "yes", "id": "7", "task": "qa", "answer_choices": ["yes", "no"]},
  ]


# ----- Chat: ShareGPT and messages -----


def test_sharegpt_roles(tmp_path):
  path = _write_json(tmp_path / "sharegpt.json", [
      {"id": "abc", "conversations": [
          {"from": "system", "value": "Be brief."},
          {"from": "human", "value": "Hi"},
          {"from": "gpt", "value": "Hello!"},
          {"from": "user", "value": "Bye"},
          {"from": "assistant", "value": "Goodbye."},
      ]},
  ])
  assert list(read_examples(path, "sharegpt")) == [{"id": "abc", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Bye"},
      {"role": "assistant", "content": "Goodbye."},
  ]}]


def test_messages_jsonl(tmp_path):
  messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
              {"role": "assistant", "content": "A"}]
  path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}, {"messages": messages[1:]}])
  assert list(read_examples(path, "messages")) == [{"messages": messages}, {"messages": messages[1:]}]


# ----- OpenAssistant -----


def _msg(message_id, role, text, rank=None, replies=()):
  return {"message_id": message_id, "role": role, "text": text, "rank": rank, "lang": "en",
          "replies": list(replies)}


# p0 -> a1 (rank 1) -> p3 (trailing prompter)
#    -> a2 (rank 0) -> p4 (rank null) -> a5
#                   -> p6 (rank 0, trailing prompter)
#    -> a7 (rank null)
_TREE = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": _msg("p0", "prompter", "2+2?", replies=[
    _msg("a1", "assistant", "4", rank=1, replies=[_msg("p3", "prompter", "Why?")]),
    _msg("a2", "assistant", "Four.", rank=0, replies=[
        _msg("p4", "prompter", "Thanks", rank=None, replies=[_msg("a5", "assistant", "You're welcome.")]),
        _msg("p6", "prompter", "And 3+3?", rank=0),
    ]),
    _msg("a7", "assistant", "2+2=4", rank=None),
])}
_U, _A = "user", "assistant"


def _chat(*turns):
  return [{"role": role, "content": text} for role, text in turns]


def test_oasst_best_path_follows_lowest_rank_and_drops_the_trailing_prompter(tmp_path):
  path = _write_jsonl(tmp_path / "trees.jsonl", [_TREE])
  assert list(read_examples(path, "oasst")) == [{"messages": _chat((_U, "2+2?"), (_A, "Four.")), "id": "t1"}]


_ALL_PATHS = [
    {"messages": _chat((_U, "2+2?"), (_A, "4")), "id": "t1/0"},
    {"messages": _chat((_U, "2+2?"), (_A, "Four."), (_U, "Thanks"), (_A, "You're welcome.")), "id": "t1/1"},
    {"messages": _chat((_U, "2+2?"), (_A, "Four.")), "id": "t1/2"},
    {"messages": _chat((_U, "2+2?"), (_A, "2+2=4")), "id": "t1/3"},
]


def test_oasst_all_paths_yields_every_distinct_conversation(tmp_path):
  path = _write_jsonl(tmp_path / "trees.jsonl", [_TREE])
  assert list(read_examples(path, "oasst", oasst_paths="all")) == _ALL_PATHS


def _flatten(message, parent_id=None):
  flat = {k: v for k, v in message.items() if k != "replies"}
  flat.update(parent_id=parent_id, message_tree_id="t1")
  return [flat] + [m for reply in message["replies"] for m in _flatten(reply, message["message_id"])]


@pytest.mark.parametrize("paths", ["best", "all"])
def test_oasst_flat_message_export_rebuilds_the_same_tree(tmp_path, paths):
  path = _write_jsonl(tmp_path / "messages.jsonl", _flatten(_TREE["prompt"]))
  expected = list(read_examples(_write_jsonl(tmp_path / "trees.jsonl", [_TREE]), "oasst", oasst_paths=paths))
  assert list(read_examples(path, "oasst", oasst_paths=paths)) == expected


def test_oasst_ties_keep_file_order_and_prompt_only_trees_are_skipped_silently(tmp_path):
  tied = {"message_tree_id": "t2", "prompt": _msg("p", "prompter", "Q", replies=[
      _msg("x", "assistant", "first"), _msg("y", "assistant", "second")])}
  lonely = {"message_tree_id": "t3", "prompt": _msg("q", "prompter", "Anyone?")}
  path = _write_jsonl(tmp_path / "trees.jsonl", [lonely, tied])
  examples, stats = read_examples_with_stats(path, "oasst")
  assert list(examples) == [{"messages": _chat((_U, "Q"), (_A, "first")), "id": "t2"}]
  assert (stats.examples, stats.skipped) == (1, 0)


def test_oasst_errors_name_the_nested_message(tmp_path):
  tree = {"message_tree_id": "t", "prompt": _msg("p", "prompter", "Q", replies=[
      _msg("a", "assistant", "ok"), _msg("b", "robot", "beep")])}
  path = _write_jsonl(tmp_path / "trees.jsonl", [tree])
  assert _error(path, "oasst") == (f"{path}:1: prompt.replies[1].role: unknown role 'robot' "
                                   "(expected one of prompter, assistant)")
  flat = [{"message_id": "p", "parent_id": None, "role": "prompter", "text": "Q"},
          {"message_id": "a", "parent_id": "gone", "role": "assistant", "text": "A"}]
  path = _write_jsonl(tmp_path / "messages.jsonl", flat)
  assert _error(path, "oasst") == f"{path}:2: parent_id: unknown parent message 'gone'"


# ----- Malformed records -----

_BAD_RECORDS = [
    ("alpaca", '{"instruction": "a"}', "output: missing field"),
    ("alpaca", '{"instruction": 5, "output": "b"}', "instruction: expected a string, got int"),
    ("alpaca", '{"instruction": "a", "output": " \\n"}', "output: empty target"),
    ("alpaca", '{"instruction": "a", "output": null}', "output: expected a string, got null"),
    ("alpaca", '{"instruction": "a" "output": "b"}', "invalid JSON (Expecting ',' delimiter: line 1 column 21)"),
    ("alpaca", '["instruction", "output"]', "expected an object, got list"),
    ("dolly", '{"instruction": "a", "context": "", "response": ""}', "response: empty target"),
    ("prompt_completion", '{"prompt": "a", "completion": }', "invalid JSON (Expecting value: line 1 column 31)"),
    ("prompt_completion", '{"prompt": "a", "completion": "b", "answer_choices": ["b", 2]}',
     "answer_choices[1]: expected a string, got int"),
    ("sharegpt", '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 1}]}',
     "conversations[1].value: expected a string, got int"),
    ("sharegpt", '{"conversations": [{"from": "human", "value": "q"}, {"from": "bard", "value": "a"}]}',
     "conversations[1].from: unknown role 'bard' (expected one of human, gpt, system, user, assistant)"),
    ("sharegpt", '{"conversations": [{"from": "human", "value": "q"}]}', "conversations: no assistant message"),
    ("messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}',
     "messages[1].content: empty target"),
    ("messages", '{"messages": [{"role": "user", "content": "q"}, "hi"]}', "messages[1]: expected an object, got string"),
    ("messages", '{"messages": {"role": "user"}}', "messages: expected a list, got object"),
]


@pytest.mark.parametrize("fmt,line,what", _BAD_RECORDS)
def test_malformed_jsonl_record_is_named_by_file_and_line(tmp_path, fmt, line, what):
  good = {"alpaca": {"instruction": "a", "output": "b"}, "dolly": {"instruction": "a", "response": "b"},
          "prompt_completion": {"prompt": "a", "completion": "b"},
          "sharegpt": {"conversations": [{"from": "gpt", "value": "b"}]},
          "messages": {"messages": [{"role": "assistant", "content": "b"}]}}[fmt]
  # A blank line before the bad record: line numbers count every physical line.
  path = _write_lines(tmp_path / "data.jsonl", [json.dumps(good), "", line, json.dumps(good)])
  with pytest.raises(FormatError, match=re.escape(f"{path}:3: {what}")):
    list(read_examples(path, fmt))
  assert _error(path, fmt) == f"{path}:3: {what}"


def test_malformed_json_list_record_is_named_by_index(tmp_path):
  path = _write_json(tmp_path / "data.json", [{"instruction": "a", "output": "b"}, {"instruction": "a"}])
  assert _error(path, "alpaca") == f"{path}: record 1: output: missing field"


def test_unparseable_json_file_fails_as_a_whole(tmp_path):
  path = tmp_path / "data.json"
  path.write_text('[{"a": 1},')
  assert _error(path, "alpaca", skip_invalid=True) == f"{path}: invalid JSON (Expecting value: line 1 column 11)"


def test_skip_invalid_yields_the_valid_records_and_warns_once(tmp_path, caplog):
  path = _write_lines(tmp_path / "data.jsonl", [
      '{"instruction": "a", "output": "1"}',
      '{"instruction": "b"}',
      '{"instruction": "c", "output": "3"}',
      'not json',
      '{"instruction": "e", "output": ""}',
  ])
  examples, stats = read_examples_with_stats(path, "alpaca", skip_invalid=True)
  with caplog.at_level(logging.WARNING):
    assert list(examples) == [{"inputs": "a", "targets": "1"}, {"inputs": "c", "targets": "3"}]
  assert (stats.examples, stats.skipped) == (2, 3)
  assert stats.first_error == f"{path}:2: output: missing field"
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f"skipped 3 invalid records of {path}; first: {path}:2: output: missing field"]
  assert list(read_examples(path, "alpaca", skip_invalid=True)) == [{"inputs": "a", "targets": "1"},
                                                                   {"inputs": "c", "targets": "3"}]


# ----- Arguments -----


def test_unknown_format_lists_the_known_ones(tmp_path):
  path = _write_jsonl(tmp_path / "data.jsonl", [])
  with pytest.raises(ValueError, match="unknown format 'alpacca'; known formats: superni, alpaca, dolly, oasst"):
    read_examples(path, "alpacca")
  assert set(formats.FORMATS) == {"superni", "alpaca", "dolly", "oasst", "sharegpt", "messages",
                                  "prompt_completion"}


def test_missing_file_fails_before_iteration(tmp_path):
  path = tmp_path / "nope.jsonl"
  with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
    read_examples(path, "alpaca")

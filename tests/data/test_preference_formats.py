"""Preference-pair readers: every format read back exactly, and every malformed record named by file:line."""

from __future__ import annotations

import gzip
import json
import logging
import re

import pytest

from sft_jax.data import formats
from sft_jax.data.formats import FormatError, read_preference_pairs, read_preference_pairs_with_stats


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
    list(read_preference_pairs(path, fmt, **kwargs))
  return str(err.value)


_S, _U, _A = "system", "user", "assistant"


def _chat(*turns):
  return [{"role": role, "content": text} for role, text in turns]


# ----- TRL / UltraFeedback -----


def test_preference_string_prompt_and_replies_carry_id_and_task(tmp_path):
  path = _write_jsonl(tmp_path / "pairs.jsonl", [
      {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "id": 7, "task": "geo"},
      {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9.0},
  ])
  assert list(read_preference_pairs(path, "preference")) == [
      {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "id": "7", "task": "geo"},
      {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
  ]


def test_preference_json_list_with_trl_explicit_conversational_prompt(tmp_path):
  prompt = _chat((_S, "Be brief."), (_U, "Hi"), (_A, "Hello."), (_U, "Sky colour?"))
  path = _write_json(tmp_path / "pairs.json", [
      {"prompt": prompt, "chosen": _chat((_A, "Blue.")), "rejected": _chat((_A, "Green."))},
      # A message-list prompt with string replies is kept as it is.
      {"prompt": _chat((_U, "Grass colour?")), "chosen": "Green.", "rejected": "Blue."},
  ])
  assert list(read_preference_pairs(path, "preference")) == [
      {"prompt": prompt, "chosen": "Blue.", "rejected": "Green."},
      {"prompt": _chat((_U, "Grass colour?")), "chosen": "Green.", "rejected": "Blue."},
  ]


def test_preference_gzip_ultrafeedback_string_prompt_repeated_in_the_conversations(tmp_path):
  record = {"prompt": "Name a prime.", "prompt_id": "abc",
            "chosen": _chat((_U, "Name a prime."), (_A, "7")),
            "rejected": _chat((_U, "Name a prime."), (_A, "8")),
            "score_chosen": 9.0, "score_rejected": 2.0}
  # Without the prompt turns in the conversations, the string prompt becomes the user turn.
  short = {"prompt": "Name an even prime.", "chosen": _chat((_A, "2")), "rejected": _chat((_A, "4"))}
  path = _write_jsonl(tmp_path / "train_prefs.data", [record, short], compress=True)
  assert list(read_preference_pairs(path, "preference")) == [
      {"prompt": _chat((_U, "Name a prime.")), "chosen": "7", "rejected": "8"},
      {"prompt": _chat((_U, "Name an even prime.")), "chosen": "2", "rejected": "4"},
  ]


def test_preference_without_prompt_shares_the_leading_messages_of_both_conversations(tmp_path):
  shared = _chat((_S, "You are terse."), (_U, "Hi"), (_A, "Hi."), (_U, "Best pet?"))
  path = _write_jsonl(tmp_path / "pairs.jsonl", [
      {"chosen": shared + _chat((_A, "A cat.")), "rejected": shared + _chat((_A, "A rock.")), "id": "x"},
  ])
  assert list(read_preference_pairs(path, "preference")) == [
      {"prompt": shared, "chosen": "A cat.", "rejected": "A rock.", "id": "x"},
  ]


def test_preference_list_prompt_may_also_be_repeated_in_the_conversations(tmp_path):
  prompt = _chat((_U, "Q"))
  path = _write_jsonl(tmp_path / "pairs.jsonl", [
      {"prompt": prompt, "chosen": prompt + _chat((_A, "good")), "rejected": prompt + _chat((_A, "bad"))}])
  assert list(read_preference_pairs(path, "preference")) == [{"prompt": prompt, "chosen": "good", "rejected": "bad"}]


# ----- Anthropic HH-RLHF -----


def test_hh_single_and_multi_turn_transcripts(tmp_path):
  path = _write_jsonl(tmp_path / "hh.jsonl", [
      {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
       "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 22."},
      {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: Knock knock.",
       "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: No."},
  ])
  assert list(read_preference_pairs(path, "hh")) == [
      {"prompt": _chat((_U, "What is 2+2?")), "chosen": "4.", "rejected": "22."},
      {"prompt": _chat((_U, "Hi"), (_A, "Hello!"), (_U, "Tell me a joke.")), "chosen": "Knock knock.",
       "rejected": "No."},
  ]


def test_hh_gzip_json_list_strips_only_one_space_and_keeps_inline_markers(tmp_path):
  path = tmp_path / "train.jsonl.gz"
  path.write_bytes(gzip.compress(json.dumps([
      # A transcript may start without the blank lines; "Human:" inside a turn is text.
      {"chosen": "Human:  indented\n\nAssistant: Say Human: hi\nok ",
       "rejected": "\n\nHuman:  indented\n\nAssistant:No"},
  ]).encode()))
  assert list(read_preference_pairs(path, "hh")) == [
      {"prompt": _chat((_U, " indented")), "chosen": "Say Human: hi\nok ", "rejected": "No"}]


# ----- OpenAssistant -----


def _msg(message_id, role, text, rank=None, replies=()):
  return {"message_id": message_id, "role": role, "text": text, "rank": rank, "lang": "en",
          "replies": list(replies)}


# p0 -> a2 (rank 2), a9 (rank null), a0 (rank 0) -> p5 -> b1 (rank 1), b0 (rank 0)
#                                                      -> p6 -> c0 (rank 0, a lone reply: no pair)
#                                    a1 (rank 1)
_TREE = {"message_tree_id": "t1", "prompt": _msg("p0", "prompter", "Name a colour.", replies=[
    _msg("a2", "assistant", "Colour.", rank=2),
    _msg("a9", "assistant", "Unranked.", rank=None),
    _msg("a0", "assistant", "Red.", rank=0, replies=[
        _msg("p5", "prompter", "Another?", replies=[
            _msg("b1", "assistant", "Blue, maybe.", rank=1), _msg("b0", "assistant", "Blue.", rank=0)]),
        _msg("p6", "prompter", "Why red?", replies=[_msg("c0", "assistant", "Warm.", rank=0)]),
    ]),
    _msg("a1", "assistant", "Reddish.", rank=1),
])}
_PAIRS = [
    {"prompt": _chat((_U, "Name a colour.")), "chosen": "Red.", "rejected": "Reddish.", "id": "t1/0"},
    {"prompt": _chat((_U, "Name a colour.")), "chosen": "Red.", "rejected": "Colour.", "id": "t1/1"},
    {"prompt": _chat((_U, "Name a colour.")), "chosen": "Reddish.", "rejected": "Colour.", "id": "t1/2"},
    {"prompt": _chat((_U, "Name a colour."), (_A, "Red."), (_U, "Another?")), "chosen": "Blue.",
     "rejected": "Blue, maybe.", "id": "t1/3"},
]


def test_oasst_pairs_every_two_ranked_replies_better_rank_first(tmp_path):
  path = _write_jsonl(tmp_path / "trees.jsonl", [_TREE])
  examples, stats = read_preference_pairs_with_stats(path, "oasst_pairs")
  assert list(examples) == _PAIRS
  assert (stats.examples, stats.skipped) == (4, 0)


def _flatten(message, parent_id=None):
  flat = {k: v for k, v in message.items() if k != "replies"}
  flat.update(parent_id=parent_id, message_tree_id="t1")
  return [flat] + [m for reply in message["replies"] for m in _flatten(reply, message["message_id"])]


def test_oasst_pairs_from_the_flat_message_export(tmp_path):
  path = _write_jsonl(tmp_path / "messages.jsonl", _flatten(_TREE["prompt"]))
  assert list(read_preference_pairs(path, "oasst_pairs")) == _PAIRS


def test_oasst_pairs_skip_equal_ranks_and_identical_texts(tmp_path):
  tree = {"message_tree_id": "t2", "prompt": _msg("p", "prompter", "Q", replies=[
      _msg("x", "assistant", "same", rank=0), _msg("y", "assistant", "tied", rank=0),
      _msg("z", "assistant", "same", rank=1)])}
  path = _write_jsonl(tmp_path / "trees.jsonl", [tree])
  assert list(read_preference_pairs(path, "oasst_pairs")) == [
      {"prompt": _chat((_U, "Q")), "chosen": "tied", "rejected": "same", "id": "t2/0"}]


def test_oasst_pairs_errors_name_the_nested_message(tmp_path):
  tree = {"message_tree_id": "t", "prompt": _msg("p", "prompter", "Q", replies=[
      _msg("a", "assistant", "ok", rank=0), _msg("b", "robot", "beep", rank=1)])}
  path = _write_jsonl(tmp_path / "trees.jsonl", [tree])
  assert _error(path, "oasst_pairs") == (f"{path}:1: prompt.replies[1].role: unknown role 'robot' "
                                         "(expected one of prompter, assistant)")


# ----- Errors -----

_CONV = {"chosen": _chat((_U, "Q"), (_A, "yes")), "rejected": _chat((_U, "Q"), (_A, "no"))}
_BAD_RECORDS = [
    ("preference", {"prompt": "Q", "rejected": "no"}, "chosen: missing field"),
    ("preference", {"prompt": "Q", "chosen": "yes"}, "rejected: missing field"),
    ("preference", {"chosen": "yes", "rejected": "no"}, "prompt: missing field"),
    ("preference", {"prompt": "Q", "chosen": "same", "rejected": "same"},
     "rejected: chosen and rejected are the same"),
    ("preference", {"chosen": _chat((_U, "Q"), (_A, "x")), "rejected": _chat((_U, "Q"), (_A, "x"))},
     "rejected: chosen and rejected are the same"),
    ("preference", {"prompt": "Q", "chosen": 3, "rejected": "no"},
     "chosen: expected a string or a list, got int"),
    ("preference", {"prompt": "Q", "chosen": "yes", "rejected": _chat((_A, "no"))},
     "rejected: expected a string, got list"),
    ("preference", {"prompt": "Q", "chosen": " ", "rejected": "no"}, "chosen: empty target"),
    ("preference", {"chosen": _chat((_U, "Q"), (_A, "yes")), "rejected": _chat((_U, "Q"), (_A, ""))},
     "rejected[1].content: empty target"),
    ("preference", {"chosen": _chat((_U, "Q"), ("bot", "yes")), "rejected": _chat((_U, "Q"), (_A, "no"))},
     "chosen[1].role: unknown role 'bot' (expected one of system, user, assistant)"),
    ("preference", {"prompt": _chat((_U, "Q"), ("human", "more")), "chosen": "yes", "rejected": "no"},
     "prompt[1].role: unknown role 'human' (expected one of system, user, assistant)"),
    ("preference", {"chosen": _chat((_U, "Q"), (_A, "yes")), "rejected": _chat((_A, "no"), (_U, "Q"))},
     "rejected[1].role: the last message must be the assistant's reply, got 'user'"),
    ("preference", {"chosen": [], "rejected": _chat((_A, "no"))}, "chosen: empty list"),
    ("preference", {"chosen": _chat((_U, "Q"), (_A, "yes")), "rejected": _chat((_U, "Q?"), (_A, "no"))},
     "rejected: messages before the reply differ from chosen's"),
    ("preference", {"chosen": _chat((_A, "yes")), "rejected": _chat((_A, "no"))},
     "prompt: missing field, and chosen has no messages before the reply"),
    ("preference", {"chosen": _chat((_U, "Q"), (_A, "hm"), (_A, "yes")),
                    "rejected": _chat((_U, "Q"), (_A, "hm"), (_A, "no"))},
     "chosen[1].role: the prompt must end with a user turn, got 'assistant'"),
    ("preference", {"prompt": _chat((_U, "Q"), (_A, "hm")), "chosen": "yes", "rejected": "no"},
     "prompt[1].role: the prompt must end with a user turn, got 'assistant'"),
    ("preference", {"prompt": [], "chosen": "yes", "rejected": "no"}, "prompt: empty list"),
    ("preference", {"prompt": "Other", **_CONV},
     "prompt: differs from the last user turn of chosen (chosen[0].content)"),
    ("preference", {"prompt": _chat((_U, "Other")), **_CONV}, "chosen: messages before the reply differ from prompt"),
    ("preference", {"prompt": "Q", "chosen": "yes", "rejected": "no", "id": True},
     "id: expected a string or an int, got bool"),
    ("preference", {"chosen": ["yes"], "rejected": ["no"]}, "chosen[0]: expected an object, got string"),
    ("preference", '{"prompt": "Q", "chosen": }', "invalid JSON (Expecting value: line 1 column 27)"),
    ("preference", "[1, 2]", "expected an object, got list"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hey\n\nAssistant: Yo"},
     "rejected: conversation before the final \"Assistant:\" turn differs from chosen's"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"},
     "chosen: transcript does not end with an \"Assistant:\" turn"),
    ("hh", {"chosen": "Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"},
     "chosen: transcript does not start with a \"Human:\" turn"),
    ("hh", {"chosen": "\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"},
     "chosen: transcript does not start with a \"Human:\" turn"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: "},
     "rejected: empty target (the final \"Assistant:\" turn)"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hm\n\nAssistant: Hello",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hm\n\nAssistant: Yo"},
     "chosen: the final \"Assistant:\" turn does not follow a \"Human:\" turn"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Same", "rejected": "\n\nHuman: Hi\n\nAssistant: Same"},
     "rejected: chosen and rejected are the same"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello"}, "rejected: missing field"),
]


@pytest.mark.parametrize("fmt,record,what", _BAD_RECORDS)
def test_malformed_record_is_named_by_file_line_and_field(tmp_path, fmt, record, what):
  good = {"preference": {"prompt": "Q", "chosen": "yes", "rejected": "no"},
          "hh": {"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: no"}}[fmt]
  line = record if isinstance(record, str) else json.dumps(record)
  # A blank line before the bad record: line numbers count every physical line.
  path = _write_lines(tmp_path / "data.jsonl", [json.dumps(good), "", line, json.dumps(good)])
  assert _error(path, fmt) == f"{path}:3: {what}"


def test_malformed_json_list_record_is_named_by_index(tmp_path):
  path = _write_json(tmp_path / "data.json", [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q"}])
  assert _error(path, "preference") == f"{path}: record 1: chosen: missing field"


def test_skip_invalid_yields_the_valid_pairs_and_warns_once(tmp_path, caplog):
  path = _write_lines(tmp_path / "data.jsonl", [
      '{"prompt": "a", "chosen": "1", "rejected": "2"}',
      '{"prompt": "b", "rejected": "2"}',
      '{"prompt": "c", "chosen": "3", "rejected": "3"}',
      'not json',
      '{"prompt": "e", "chosen": "5", "rejected": "6"}',
  ])
  examples, stats = read_preference_pairs_with_stats(path, "preference", skip_invalid=True)
  with caplog.at_level(logging.WARNING):
    assert list(examples) == [{"prompt": "a", "chosen": "1", "rejected": "2"},
                              {"prompt": "e", "chosen": "5", "rejected": "6"}]
  assert (stats.examples, stats.skipped) == (2, 3)
  assert stats.first_error == f"{path}:2: chosen: missing field"
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f"skipped 3 invalid records of {path}; first: {path}:2: chosen: missing field"]
  assert len(list(read_preference_pairs(path, "preference", skip_invalid=True))) == 2


# ----- Arguments -----


def test_unknown_format_lists_the_known_ones(tmp_path):
  path = _write_jsonl(tmp_path / "data.jsonl", [])
  known = "known formats: preference, hh, oasst_pairs"
  with pytest.raises(ValueError, match=f"unknown preference format 'alpaca'; {known}"):
    read_preference_pairs(path, "alpaca")
  assert formats.PREFERENCE_FORMATS == ("preference", "hh", "oasst_pairs")


def test_missing_file_fails_before_iteration(tmp_path):
  path = tmp_path / "nope.jsonl"
  with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
    read_preference_pairs(path, "hh")

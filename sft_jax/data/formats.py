"""Readers that turn instruction-tuning source files into canonical examples.

A canonical example is single-turn `{"inputs": str, "targets": str}` or chat
`{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`,
plus `answer_choices`, `task` and `id` when the source has them.

A canonical preference pair, for DPO, is `{"prompt": str | [messages], "chosen": str,
"rejected": str}`: the prompt is a single-turn string or the conversation before the
compared reply (chat messages ending with a user turn), chosen and rejected are the
preferred and the dispreferred assistant reply; plus `task` and `id` when the source
has them.

Files are JSON or JSONL, plain or gzip-compressed (recognised by the gzip magic
bytes, so the file name does not matter). A record file whose first non-blank
character is `[` is read as one JSON list of records; any other file is JSONL,
one record per line, blank lines ignored (a single-line `{...}` file is a
one-record JSONL file; a pretty-printed object is not a record file and fails at
its first line). A Super-NaturalInstructions task file is always one JSON object.

Every malformed record raises `FormatError` naming where it is and what is wrong:
`data.jsonl:3: output: missing field` for JSONL (1-based line) and
`data.json: record 2: output: empty target` for JSON lists (0-based index).
Problems with a whole file (unparseable JSON, a Super-NI header) always raise.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import gzip
import itertools
import json
import logging
import os
import re
import zlib
from typing import Any, Callable, Iterator

FORMATS: tuple[str, ...] = ("superni", "alpaca", "dolly", "oasst", "sharegpt", "messages",
                            "prompt_completion")
OASST_PATHS: tuple[str, ...] = ("best", "all")
PREFERENCE_FORMATS: tuple[str, ...] = ("preference", "hh", "oasst_pairs")

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_REQUIRED = object()
_MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user",
                   "assistant": "assistant"}
_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# An HH-RLHF turn starts with "\n\nHuman: " or "\n\nAssistant: "; the space is not part of the text.
_HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant): ?")
_TYPE_NAMES = {str: "string", int: "int", float: "float", bool: "bool", list: "list", dict: "object",
               type(None): "null"}
_EXPECTED = {str: "a string", list: "a list", dict: "an object", (str, int): "a string or an int",
             (int, float): "a number", (str, list): "a string or a list"}


class FormatError(ValueError):
  """A malformed source file or record; the message starts with `path:line` or `path: record i`."""


class _Invalid(Exception):
  """A problem inside one record; the reader adds the record's location."""

  def __init__(self, field: str, what: str):
    super().__init__(field, what)
    self.field, self.what = field, what

  def at(self, where: str) -> FormatError:
    return FormatError(f"{where}: {self.field}: {self.what}" if self.field else f"{where}: {self.what}")


@dataclasses.dataclass
class ReadStats:
  """What one read produced; final once its iterator is exhausted."""

  examples: int = 0
  skipped: int = 0
  first_error: str | None = None


# ----- Files and lines -----


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based line number, raw line) of a plain or gzip-compressed file."""
  with open(path, "rb") as f:
    compressed = f.read(2) == _GZIP_MAGIC
  with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
    try:
      for lineno, line in enumerate(f, start=1):
        yield lineno, line.removeprefix(_UTF8_BOM) if lineno == 1 else line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
      raise FormatError(f"{path}: corrupt gzip data ({e})") from e


def _decode_json(where: str, raw: bytes) -> Any:
  """Parses UTF-8 JSON text; failures become a FormatError located at `where`."""
  try:
    return json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise FormatError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise FormatError(f"{where}: invalid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None


def _read_records(path: str) -> Iterator[tuple[str, Any]]:
  """Yields (location, record) for a JSON list or JSONL file; a broken line yields its FormatError."""
  lines = _lines(path)
  head = []
  for lineno, line in lines:
    head.append((lineno, line))
    if line.strip():
      break
  if head and head[-1][1].lstrip().startswith(b"["):
    records = _decode_json(path, b"".join(line for _, line in itertools.chain(head, lines)))
    for index, record in enumerate(records):
      yield f"{path}: record {index}", record
    return
  for lineno, line in itertools.chain(head, lines):
    if line.strip():
      where = f"{path}:{lineno}"
      try:
        record = _decode_json(where, line)
      except FormatError as e:
        record = e  # one broken line is one invalid record, not a broken file
      yield where, record


# ----- Field checks -----


def _join(at: str, key: str) -> str:
  return f"{at}.{key}" if at else key


def _check_type(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
  # bool is an int to isinstance, but `true` is never a valid string, rank or id.
  if isinstance(value, bool) or not isinstance(value, kind):
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    raise _Invalid(field, f"expected {_EXPECTED[kind]}, got {got}")
  return value


def _get(obj: dict, key: str, kind: type | tuple[type, ...], at: str = "", *,
         default: Any = _REQUIRED) -> Any:
  """Returns `obj[key]` checked against `kind`; optional fields (with `default`) may be absent or null."""
  field = _join(at, key)
  if obj.get(key) is None and default is not _REQUIRED:
    return default
  if key not in obj:
    raise _Invalid(field, "missing field")
  return _check_type(obj[key], kind, field)


def _get_target(obj: dict, key: str, at: str = "") -> str:
  """A required string that a model learns to produce: empty or whitespace-only is invalid."""
  value = _get(obj, key, str, at)
  if not value.strip():
    raise _Invalid(_join(at, key), "empty target")
  return value


def _get_strings(obj: dict, key: str, at: str = "", *, default: Any = _REQUIRED) -> list[str]:
  values = _get(obj, key, list, at, default=default)
  for i, value in enumerate(values or ()):
    _check_type(value, str, f"{_join(at, key)}[{i}]")
  return values


def _id_and_task(record: dict) -> dict:
  """The `id` and `task` a record carries, checked; absent ones are left out."""
  fields = {}
  if (id_ := _get(record, "id", (str, int), default=None)) is not None:
    fields["id"] = str(id_)
  if (task := _get(record, "task", str, default=None)) is not None:
    fields["task"] = task
  return fields


def _optional_fields(record: dict) -> dict:
  """The `id`, `task` and `answer_choices` a record carries, checked; absent ones are left out."""
  fields = _id_and_task(record)
  if (choices := _get_strings(record, "answer_choices", default=None)) is not None:
    fields["answer_choices"] = list(choices)
  return fields


def _prompt(instruction: str, context: str) -> str:
  # Alpaca and Dolly put the optional input after the instruction, separated by a blank line.
  return f"{instruction}\n\n{context}" if context.strip() else instruction


# ----- Record formats: one record -> one example -----


def _parse_alpaca(record: dict) -> dict:
  """Alpaca, Self-Instruct and GPT-4-LLM: instruction, optional input, output."""
  inputs = _prompt(_get(record, "instruction", str), _get(record, "input", str, default=""))
  return {"inputs": inputs, "targets": _get_target(record, "output"), **_optional_fields(record)}


def _parse_dolly(record: dict) -> dict:
  """databricks-dolly-15k: instruction, optional context, response; the category names the task."""
  inputs = _prompt(_get(record, "instruction", str), _get(record, "context", str, default=""))
  example = {"inputs": inputs, "targets": _get_target(record, "response"), **_optional_fields(record)}
  if (category := _get(record, "category", str, default=None)) is not None:
    example["task"] = category
  return example


def _parse_prompt_completion(record: dict) -> dict:
  return {"inputs": _get(record, "prompt", str), "targets": _get_target(record, "completion"),
          **_optional_fields(record)}


def _chat_turns(record: dict, list_key: str, role_key: str, content_key: str,
                roles: dict[str, str]) -> list[dict]:
  """The list of turns `record[list_key]` as canonical messages, roles mapped through `roles`."""
  messages = []
  for i, turn in enumerate(_get(record, list_key, list)):
    at = f"{list_key}[{i}]"
    role = _get(_check_type(turn, dict, at), role_key, str, at)
    if role not in roles:
      raise _Invalid(_join(at, role_key), f"unknown role {role!r} (expected one of {', '.join(roles)})")
    messages.append({"role": roles[role], "content": _get(turn, content_key, str, at)})
  return messages


def _parse_chat(record: dict, list_key: str, role_key: str, content_key: str, roles: dict[str, str]) -> dict:
  """Reads a list of turns; the last assistant turn is the target and must not be empty."""
  messages = _chat_turns(record, list_key, role_key, content_key, roles)
  assistant = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
  if not assistant:
    raise _Invalid(list_key, "no assistant message")
  if not messages[assistant[-1]]["content"].strip():
    raise _Invalid(f"{list_key}[{assistant[-1]}].{content_key}", "empty target")
  return {"messages": messages, **_optional_fields(record)}


def _parse_sharegpt(record: dict) -> dict:
  return _parse_chat(record, "conversations", "from", "value", _SHAREGPT_ROLES)


def _parse_messages(record: dict) -> dict:
  return _parse_chat(record, "messages", "role", "content", _MESSAGE_ROLES)


_RECORD_PARSERS: dict[str, Callable[[dict], dict]] = {
    "alpaca": _parse_alpaca,
    "dolly": _parse_dolly,
    "prompt_completion": _parse_prompt_completion,
    "sharegpt": _parse_sharegpt,
    "messages": _parse_messages,
}


def _record_examples(path: str, parse: Callable[[dict], dict]) -> Iterator[dict | FormatError]:
  for where, record in _read_records(path):
    if isinstance(record, FormatError):
      yield record
      continue
    try:
      yield parse(_check_type(record, dict, ""))
    except _Invalid as e:
      yield e.at(where)


# ----- Super-NaturalInstructions: one task file -> one example per instance -----


def _superni_demos(task: dict, key: str) -> list[dict]:
  demos = []
  for i, demo in enumerate(_get(task, key, list, default=[])):
    at = f"{key}[{i}]"
    _check_type(demo, dict, at)
    demos.append({"input": _get(demo, "input", str, at), "output": _get(demo, "output", str, at),
                  "explanation": _get(demo, "explanation", str, at, default="")})
  return demos


def _superni_definition(task: dict) -> str:
  definition = _get(task, "Definition", (str, list))
  if isinstance(definition, str):
    return definition
  if not definition:
    raise _Invalid("Definition", "empty list")
  # Every released task has exactly one definition; the official evaluation uses the first.
  return _check_type(definition[0], str, "Definition[0]")


def _superni_examples(path: str) -> Iterator[dict | FormatError]:
  try:
    task = _check_type(_decode_json(path, b"".join(line for _, line in _lines(path))), dict, "")
    definition = _superni_definition(task)
    positives = _superni_demos(task, "Positive Examples")
    negatives = _superni_demos(task, "Negative Examples")
    instances = _get(task, "Instances", list)
  except _Invalid as e:
    raise e.at(path) from None
  # Super-NI names a task by its file: tasks/task001_quoref_question_generation.json.
  name = os.path.basename(path)
  for suffix in (".gz", ".jsonl", ".json"):
    name = name.removesuffix(suffix)
  for i, instance in enumerate(instances):
    at = f"Instances[{i}]"
    try:
      _check_type(instance, dict, at)
      id_, inputs = _get(instance, "id", str, at), _get(instance, "input", str, at)
      references = _get_strings(instance, "output", at)
      if not references:
        raise _Invalid(_join(at, "output"), "empty list, expected at least one output")
      if not references[0].strip():
        raise _Invalid(f"{at}.output[0]", "empty target")
    except _Invalid as e:
      yield e.at(path)
      continue
    yield {"inputs": inputs, "targets": references[0], "references": list(references), "id": id_,
           "task": name, "definition": definition,
           # Copies: a consumer editing one example's demonstrations must not edit the others.
           "positive_examples": [dict(d) for d in positives],
           "negative_examples": [dict(d) for d in negatives]}


# ----- OpenAssistant: message trees -> conversations -----


@dataclasses.dataclass
class _OasstMessage:
  message_id: str
  role: str
  text: str
  rank: float | None
  replies: list[_OasstMessage] = dataclasses.field(default_factory=list)


def _oasst_message(obj: dict, at: str) -> _OasstMessage:
  role = _get(obj, "role", str, at)
  if role not in _OASST_ROLES:
    raise _Invalid(_join(at, "role"), f"unknown role {role!r} (expected one of {', '.join(_OASST_ROLES)})")
  text = _get(obj, "text", str, at)
  if role == "assistant" and not text.strip():
    raise _Invalid(_join(at, "text"), "empty target")
  return _OasstMessage(_get(obj, "message_id", str, at), role, text,
                       _get(obj, "rank", (int, float), at, default=None))


def _oasst_tree(obj: Any, at: str) -> _OasstMessage:
  node = _oasst_message(_check_type(obj, dict, at), at)
  for i, reply in enumerate(_get(obj, "replies", list, at, default=[])):
    node.replies.append(_oasst_tree(reply, f"{_join(at, 'replies')}[{i}]"))
  return node


def _best_path(root: _OasstMessage) -> list[_OasstMessage]:
  path = [root]
  while path[-1].replies:
    # Rank 0 is the preferred reply; unranked replies come last; min() keeps file order on ties.
    path.append(min(path[-1].replies, key=lambda m: (m.rank is None, m.rank or 0)))
  return path


def _all_paths(node: _OasstMessage, prefix: tuple[_OasstMessage, ...] = ()) -> list[list[_OasstMessage]]:
  path = (*prefix, node)
  if not node.replies:
    return [list(path)]
  return [p for reply in node.replies for p in _all_paths(reply, path)]


def _oasst_conversations(tree_id: str, root: _OasstMessage, paths: str) -> list[dict]:
  """Flattens a tree into conversations that end on an assistant message."""
  examples, seen = [], set()
  for path in [_best_path(root)] if paths == "best" else _all_paths(root):
    while path and path[-1].role != "assistant":
      path.pop()  # a trailing prompter message has no answer to learn from
    key = tuple(m.message_id for m in path)
    # Sibling prompter leaves trim to the same conversation; keep it once.
    if not path or key in seen:
      continue
    seen.add(key)
    examples.append({"messages": [{"role": _OASST_ROLES[m.role], "content": m.text} for m in path],
                     "id": tree_id if paths == "best" else f"{tree_id}/{len(examples)}"})
  return examples


@dataclasses.dataclass
class _FlatMessage:
  """One record of the flat messages export, before its tree is rebuilt."""

  where: str
  message: _OasstMessage
  parent_id: str | None
  tree_id: str | None


# Turns one rebuilt tree (its id, its root message) into examples.
_TreeExamples = Callable[[str, _OasstMessage], list[dict]]


def _oasst_flat_trees(flat: list[_FlatMessage], tree_examples: _TreeExamples) -> Iterator[dict | FormatError]:
  """Rebuilds the trees of the flat messages export from parent ids, replies in file order."""
  by_id: dict[str, _FlatMessage] = {}
  for entry in flat:
    if entry.message.message_id in by_id:
      yield _Invalid("message_id", f"duplicate message {entry.message.message_id!r}").at(entry.where)
    else:
      by_id[entry.message.message_id] = entry
  for entry in by_id.values():
    if entry.parent_id in by_id:
      by_id[entry.parent_id].message.replies.append(entry.message)
  roots = [entry for entry in by_id.values() if entry.parent_id is None]
  reached, stack = set(), [entry.message for entry in roots]
  while stack:
    message = stack.pop()
    reached.add(message.message_id)
    stack.extend(message.replies)
  # Unreachable messages (a missing parent, a cycle) would otherwise vanish without a word.
  for entry in by_id.values():
    if entry.message.message_id not in reached:
      what = (f"unknown parent message {entry.parent_id!r}" if entry.parent_id not in by_id else
              f"parent message {entry.parent_id!r} is not connected to a root message")
      yield _Invalid("parent_id", what).at(entry.where)
  for entry in roots:
    yield from tree_examples(entry.tree_id or entry.message.message_id, entry.message)


def _oasst_examples(path: str, tree_examples: _TreeExamples) -> Iterator[dict | FormatError]:
  flat = []
  for where, record in _read_records(path):
    if isinstance(record, FormatError):
      yield record
      continue
    try:
      _check_type(record, dict, "")
      # The trees export nests messages under "prompt"; the messages export has one per record.
      if "prompt" in record or not record.keys() & {"message_id", "parent_id", "role", "text"}:
        examples = tree_examples(_get(record, "message_tree_id", str),
                                 _oasst_tree(_get(record, "prompt", dict), "prompt"))
      else:
        examples = []
        flat.append(_FlatMessage(where, _oasst_message(record, ""),
                                 _get(record, "parent_id", str, default=None),
                                 _get(record, "message_tree_id", str, default=None)))
    except _Invalid as e:
      yield e.at(where)
      continue
    yield from examples
  yield from _oasst_flat_trees(flat, tree_examples)


# ----- Preference pairs: a prompt and two compared replies -----


def _pair(record: dict, prompt: str | list[dict], chosen: str, rejected: str) -> dict:
  # An identical pair has no preference to learn and a DPO margin of exactly zero.
  if chosen == rejected:
    raise _Invalid("rejected", "chosen and rejected are the same")
  return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_id_and_task(record)}


def _check_last_role(messages: list[dict], key: str, role: str, what: str) -> int:
  """The index of the last message, which must exist and have `role` (`what` says why)."""
  if not messages:
    raise _Invalid(key, "empty list")
  last = len(messages) - 1
  if messages[last]["role"] != role:
    raise _Invalid(f"{key}[{last}].role", f"{what}, got {messages[last]['role']!r}")
  return last


def _check_prompt(messages: list[dict], key: str) -> list[dict]:
  """A prompt conversation must end with the user turn that the compared replies answer."""
  _check_last_role(messages, key, "user", "the prompt must end with a user turn")
  return messages


def _reply(messages: list[dict], key: str) -> str:
  """The final message of a compared conversation: a non-empty assistant reply."""
  last = _check_last_role(messages, key, "assistant", "the last message must be the assistant's reply")
  if not messages[last]["content"].strip():
    raise _Invalid(f"{key}[{last}].content", "empty target")
  return messages[last]["content"]


def _preference_conversations(record: dict) -> tuple[list[dict], str, str]:
  """(prompt, chosen, rejected) of chosen/rejected message lists that end with the compared replies."""
  chosen_turns = _chat_turns(record, "chosen", "role", "content", _MESSAGE_ROLES)
  chosen = _reply(chosen_turns, "chosen")
  rejected_turns = _chat_turns(record, "rejected", "role", "content", _MESSAGE_ROLES)
  rejected = _reply(rejected_turns, "rejected")
  # UltraFeedback repeats the prompt turns in both conversations; TRL's explicit-prompt records hold
  # only the reply. Either way both sides must have answered the same conversation.
  context = chosen_turns[:-1]
  if rejected_turns[:-1] != context:
    raise _Invalid("rejected", "messages before the reply differ from chosen's")
  prompt = _get(record, "prompt", (str, list), default=None)
  if prompt is None:
    if not context:
      raise _Invalid("prompt", "missing field, and chosen has no messages before the reply")
    return _check_prompt(context, "chosen"), chosen, rejected
  if isinstance(prompt, str):
    if not context:
      return [{"role": "user", "content": prompt}], chosen, rejected
    _check_prompt(context, "chosen")
    if context[-1]["content"] != prompt:
      raise _Invalid("prompt",
                     f"differs from the last user turn of chosen (chosen[{len(context) - 1}].content)")
    return context, chosen, rejected
  prompt = _check_prompt(_chat_turns(record, "prompt", "role", "content", _MESSAGE_ROLES), "prompt")
  if context and context != prompt:
    raise _Invalid("chosen", "messages before the reply differ from prompt")
  return prompt, chosen, rejected


def _parse_preference(record: dict) -> dict:
  """TRL and UltraFeedback: a prompt and string replies, or conversations ending with the replies."""
  if isinstance(_get(record, "chosen", (str, list)), list):
    return _pair(record, *_preference_conversations(record))
  prompt = _get(record, "prompt", (str, list))
  if isinstance(prompt, list):
    prompt = _check_prompt(_chat_turns(record, "prompt", "role", "content", _MESSAGE_ROLES), "prompt")
  return _pair(record, prompt, _get_target(record, "chosen"), _get_target(record, "rejected"))


def _hh_transcript(record: dict, key: str) -> tuple[list[dict], str]:
  """Splits an HH-RLHF transcript into the conversation before its final Assistant turn and that turn."""
  # split() gives [text before the first turn, role, text, role, text, ...].
  parts = _HH_TURN.split(_get(record, key, str))
  if parts[0] or len(parts) == 1 or parts[1] != "Human":
    raise _Invalid(key, 'transcript does not start with a "Human:" turn')
  messages = [{"role": _HH_ROLES[role], "content": text} for role, text in zip(parts[1::2], parts[2::2])]
  if messages[-1]["role"] != "assistant":
    raise _Invalid(key, 'transcript does not end with an "Assistant:" turn')
  if not messages[-1]["content"].strip():
    raise _Invalid(key, 'empty target (the final "Assistant:" turn)')
  if messages[-2]["role"] != "user":
    raise _Invalid(key, 'the final "Assistant:" turn does not follow a "Human:" turn')
  return messages[:-1], messages[-1]["content"]


def _parse_hh(record: dict) -> dict:
  """Anthropic HH-RLHF: two full transcripts that differ only in the final Assistant turn."""
  prompt, chosen = _hh_transcript(record, "chosen")
  rejected_prompt, rejected = _hh_transcript(record, "rejected")
  if rejected_prompt != prompt:
    raise _Invalid("rejected", 'conversation before the final "Assistant:" turn differs from chosen\'s')
  return _pair(record, prompt, chosen, rejected)


_PREFERENCE_PARSERS: dict[str, Callable[[dict], dict]] = {
    "preference": _parse_preference,
    "hh": _parse_hh,
}


def _oasst_node_paths(node: _OasstMessage,
                      prefix: tuple[_OasstMessage, ...] = ()) -> Iterator[tuple[_OasstMessage, ...]]:
  """The path from the root to every message of a tree, depth first, replies in file order."""
  path = (*prefix, node)
  yield path
  for reply in node.replies:
    yield from _oasst_node_paths(reply, path)


def _oasst_pairs(tree_id: str, root: _OasstMessage) -> list[dict]:
  """Pairs every two ranked assistant replies to one prompter message, the lower (better) rank chosen."""
  examples = []
  for path in _oasst_node_paths(root):
    if path[-1].role != "prompter":
      continue
    # sorted() is stable: equal ranks keep file order (and make no pair below).
    ranked = sorted((m for m in path[-1].replies if m.role == "assistant" and m.rank is not None),
                    key=lambda m: m.rank)
    for i, better in enumerate(ranked):
      for worse in ranked[i + 1:]:
        # Equal ranks state no preference; identical texts leave DPO nothing to learn.
        if better.rank == worse.rank or better.text == worse.text:
          continue
        examples.append({"prompt": [{"role": _OASST_ROLES[m.role], "content": m.text} for m in path],
                         "chosen": better.text, "rejected": worse.text, "id": f"{tree_id}/{len(examples)}"})
  return examples


# ----- Entry points -----


def _checked(path: str, items: Iterator[dict | FormatError], skip_invalid: bool,
             stats: ReadStats) -> Iterator[dict]:
  for item in items:
    if isinstance(item, FormatError):
      if not skip_invalid:
        raise item
      stats.skipped += 1
      stats.first_error = stats.first_error or str(item)
      continue
    stats.examples += 1
    yield item
  if stats.skipped:
    logging.warning("skipped %d invalid records of %s; first: %s", stats.skipped, path, stats.first_error)


def _check_exists(path: str) -> None:
  # Checked now, not at the first next(): a typo in a path should fail where the read is set up.
  if not os.path.exists(path):
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def read_examples_with_stats(path: str | os.PathLike, fmt: str, *, skip_invalid: bool = False,
                             oasst_paths: str = "best") -> tuple[Iterator[dict], ReadStats]:
  """Like `read_examples`, and also returns the ReadStats the iterator fills in as it runs."""
  path = os.fspath(path)
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
  if oasst_paths not in OASST_PATHS:
    raise ValueError(f"unknown oasst_paths {oasst_paths!r}; expected one of {', '.join(OASST_PATHS)}")
  _check_exists(path)
  if fmt == "superni":
    items = _superni_examples(path)
  elif fmt == "oasst":
    items = _oasst_examples(path, functools.partial(_oasst_conversations, paths=oasst_paths))
  else:
    items = _record_examples(path, _RECORD_PARSERS[fmt])
  stats = ReadStats()
  return _checked(path, items, skip_invalid, stats), stats


def read_examples(path: str | os.PathLike, fmt: str, *, skip_invalid: bool = False,
                  oasst_paths: str = "best") -> Iterator[dict]:
  """Yields the canonical examples of a `fmt` file; malformed records raise FormatError or, with
  `skip_invalid`, are skipped and counted in one warning. `oasst_paths` is "best" or "all"."""
  examples, _ = read_examples_with_stats(path, fmt, skip_invalid=skip_invalid, oasst_paths=oasst_paths)
  return examples


def read_preference_pairs_with_stats(path: str | os.PathLike, fmt: str, *,
                                     skip_invalid: bool = False) -> tuple[Iterator[dict], ReadStats]:
  """Like `read_preference_pairs`, and also returns the ReadStats the iterator fills in as it runs."""
  path = os.fspath(path)
  if fmt not in PREFERENCE_FORMATS:
    raise ValueError(f"unknown preference format {fmt!r}; known formats: {', '.join(PREFERENCE_FORMATS)}")
  _check_exists(path)
  if fmt == "oasst_pairs":
    items = _oasst_examples(path, _oasst_pairs)
  else:
    items = _record_examples(path, _PREFERENCE_PARSERS[fmt])
  stats = ReadStats()
  return _checked(path, items, skip_invalid, stats), stats


def read_preference_pairs(path: str | os.PathLike, fmt: str, *, skip_invalid: bool = False) -> Iterator[dict]:
  """Yields the canonical preference pairs of a `fmt` file; malformed records raise FormatError or,
  with `skip_invalid`, are skipped and counted in one warning."""
  pairs, _ = read_preference_pairs_with_stats(path, fmt, skip_invalid=skip_invalid)
  return pairs

"""Chat templates: a conversation becomes token ids plus loss weights on assistant tokens.

One function, `render_chat`, serves training and inference. Training renders a
conversation that ends with an assistant message; inference renders the same
conversation without its last reply and with `add_generation_prompt=True`, and
gets exactly the token ids the training rendering has up to that reply. Loss
weights are 1 on assistant content and on the token that ends each assistant
turn (the model must learn to stop), 0 on everything else: BOS, role headers,
system and user content, and separators between turns.

Templates:
  - built-in `chatml` and `llama3`, whose turn markers are special tokens placed
    by id, so a marker is always exactly one token;
  - `JinjaChatTemplate`, any Hugging Face `chat_template`. Jinja renders text
    only, so the assistant spans are located by rendering the conversation
    prefix by prefix and taking what each assistant message adds.

Text is tokenized piece by piece: each run of text with one loss weight is
encoded on its own and the ids are concatenated. A token therefore never
straddles a prompt/answer boundary (a weight is never ambiguous), and an
inference prompt, which ends at such a boundary, is tokenized exactly as the
same prefix of a training example. With the pre-tokenizers of ChatML/Llama-3
models, which split text at special tokens and between a newline and a word,
this gives the ids of encoding the whole text at once; it differs only where a
reply begins with whitespace that would merge with the header's newline.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import json
import os
from collections.abc import Callable, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from sft_jax.data import vocabularies

ROLES = ("system", "user", "assistant")
Message = Mapping[str, str]


@dataclasses.dataclass(frozen=True, eq=False)
class RenderedChat:
  """A rendered conversation: its text, int32 token ids and int32 loss weights (1 = assistant)."""
  text: str
  token_ids: np.ndarray
  loss_weights: np.ndarray


@dataclasses.dataclass(frozen=True)
class Piece:
  """A run of rendered text with one loss weight; `special` marks one special token, placed by id."""
  text: str
  weight: int
  special: bool = False


class ChatTemplate(abc.ABC):
  """Turns validated messages into weighted pieces of text."""

  name: str
  # Token strings that must be single tokens of the vocabulary wherever they appear.
  special_tokens: tuple[str, ...]

  @abc.abstractmethod
  def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    """The rendered conversation as weighted pieces (1 on assistant content and turn-end tokens)."""


# ------------------------------------------------------------------------------------------------
# Built-in templates
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpecialTokenChatTemplate(ChatTemplate):
  """A turn format delimited by special tokens.

  Renders `begin`, then per message `header` content `end_token` `separator`.

  `begin` and `header` are sequences of parts; a part listed in `special_tokens`
  is one token, any other is text in which "{role}" is replaced by the role.
  The generation prompt is the assistant header.
  """
  name: str
  special_tokens: tuple[str, ...]
  begin: tuple[str, ...]
  header: tuple[str, ...]
  end_token: str
  separator: str = ""

  def _header(self, role: str) -> list[Piece]:
    return [Piece(part, 0, special=True) if part in self.special_tokens
            else Piece(part.replace("{role}", role), 0) for part in self.header]

  def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    out = [Piece(part, 0, special=part in self.special_tokens) for part in self.begin]
    for message in messages:
      weight = int(message["role"] == "assistant")
      out += self._header(message["role"])
      out.append(Piece(message["content"], weight))
      out.append(Piece(self.end_token, weight, special=True))
      # The separator follows the end token; generation stops at the end token,
      # so the model is never asked to produce it.
      if self.separator:
        out.append(Piece(self.separator, 0))
    if add_generation_prompt:
      out += self._header("assistant")
    return out


CHATML = SpecialTokenChatTemplate(
    name="chatml",
    special_tokens=("<|im_start|>", "<|im_end|>"),
    begin=(),
    header=("<|im_start|>", "{role}\n"),
    end_token="<|im_end|>",
    separator="\n",
)

LLAMA3 = SpecialTokenChatTemplate(
    name="llama3",
    special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    begin=("<|begin_of_text|>",),
    header=("<|start_header_id|>", "{role}", "<|end_header_id|>", "\n\n"),
    end_token="<|eot_id|>",
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {"chatml": CHATML, "llama3": LLAMA3}


# ------------------------------------------------------------------------------------------------
# Jinja templates from a Hugging Face tokenizer_config.json
# ------------------------------------------------------------------------------------------------


def _jinja_environment():
  """A sandboxed Jinja environment with the settings and helpers HF chat templates expect."""
  # Imported here so that sft_jax.data imports without jinja2.
  import jinja2  # pylint: disable=g-import-not-at-top
  import jinja2.ext  # pylint: disable=g-import-not-at-top
  import jinja2.sandbox  # pylint: disable=g-import-not-at-top

  class GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` and renders its body unchanged.

    Templates written for assistant masks use the tag; spans are found here by
    prefix renders, so the tag only needs to parse.
    """
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters, which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env


class JinjaChatTemplate(ChatTemplate):
  """A Hugging Face Jinja chat template, rendered as `transformers`' apply_chat_template renders it.

  `variables` (e.g. bos_token, eos_token) are visible to the template;
  `special_tokens` must be single tokens of the vocabulary wherever they appear.
  """

  def __init__(self, source: str, *, name: str = "jinja", variables: Mapping[str, str] | None = None,
               special_tokens: Sequence[str] = ()):
    self.name = name
    self.source = source
    self.variables = dict(variables or {})
    self.special_tokens = tuple(dict.fromkeys([*self.variables.values(), *special_tokens]))
    self._template = _jinja_environment().from_string(source)

  @classmethod
  def from_tokenizer_config(cls, path: str, template_name: str = "default") -> JinjaChatTemplate:
    """The `chat_template` of a tokenizer_config.json, or of a model directory.

    A directory's chat_template.jinja, where present, wins over the config's
    `chat_template` (as in transformers). A config holding several named
    templates yields `template_name`.
    """
    if tf.io.gfile.isdir(path):
      config_file = os.path.join(path, "tokenizer_config.json")
      jinja_file = os.path.join(path, "chat_template.jinja")
    else:
      config_file, jinja_file = path, None
    config = {}
    if tf.io.gfile.exists(config_file):
      with tf.io.gfile.GFile(config_file, "r") as f:
        config = json.load(f)
    source = config.get("chat_template")
    if jinja_file is not None and tf.io.gfile.exists(jinja_file):
      with tf.io.gfile.GFile(jinja_file, "r") as f:
        source = f.read()
    if isinstance(source, list):
      named = {entry["name"]: entry["template"] for entry in source}
      if template_name not in named:
        raise ValueError(f"{config_file}: no chat template named {template_name!r}; it has {sorted(named)}")
      source = named[template_name]
    if not isinstance(source, str):
      raise ValueError(f"{path}: no chat_template in tokenizer_config.json (or chat_template.jinja)")
    added = [entry["content"] for entry in config.get("added_tokens_decoder", {}).values()
             if isinstance(entry, Mapping) and entry.get("special")]
    variables = vocabularies.read_special_tokens(path)
    return cls(source, name=path, variables=variables, special_tokens=added)

  def render_text(self, messages: Sequence[Message], add_generation_prompt: bool = False,
                  strftime_now: Callable[[str], str] | None = None) -> str:
    """The template's text for `messages` (no validation, no tokenization)."""
    context = {**self.variables, "messages": [dict(m) for m in messages], "tools": None,
               "documents": None, "add_generation_prompt": add_generation_prompt}
    if strftime_now is not None:
      context["strftime_now"] = strftime_now
    import jinja2  # pylint: disable=g-import-not-at-top
    try:
      return self._template.render(**context)
    except jinja2.TemplateError as e:
      raise ValueError(f"chat template {self.name!r} failed to render {len(messages)} message(s) "
                       f"(add_generation_prompt={add_generation_prompt}): {e}") from e

  def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
    # One clock for all prefix renders, so a date in a system prompt cannot
    # change between them (and break the prefix checks at midnight).
    now = datetime.datetime.now()
    def render(msgs: Sequence[Message], generation_prompt: bool) -> str:
      return self.render_text(msgs, generation_prompt, strftime_now=now.strftime)

    full = render(messages, add_generation_prompt)

    def checked_prefix(text: str, what: str) -> int:
      if not full.startswith(text):
        raise ValueError(
            f"chat template {self.name!r} is not prefix-stable: the rendering of {what} is not a prefix of "
            "the rendering of the whole conversation, so its assistant turns cannot be located. Such "
            "templates (e.g. ones that rewrite earlier turns) are not supported for training.")
      return len(text)

    spans, last_end = [], 0
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      start = checked_prefix(render(messages[:i], True), f"messages[:{i}] with the generation prompt")
      end = checked_prefix(render(messages[:i + 1], False), f"messages[:{i + 1}]")
      # Whitespace after the turn-end token separates turns and is never
      # generated (decoding stops at the end token), so it is not a target.
      end = start + len(full[start:end].rstrip())
      if start < last_end or end < start:
        raise ValueError(f"chat template {self.name!r}: assistant message {i} renders at characters "
                         f"[{start}, {end}), which overlaps or precedes the previous turn")
      spans.append((start, end))
      last_end = end

    out, position = [], 0
    for start, end in spans:
      out += [Piece(full[position:start], 0), Piece(full[start:end], 1)]
      position = end
    out.append(Piece(full[position:], 0))
    return [piece for piece in out if piece.text]


@gin.configurable
def get_chat_template(name: str) -> ChatTemplate:
  """A built-in template ("chatml", "llama3"), or the Jinja template of a tokenizer_config.json/model dir."""
  if name in BUILTIN_TEMPLATES:
    return BUILTIN_TEMPLATES[name]
  if tf.io.gfile.exists(name):
    return JinjaChatTemplate.from_tokenizer_config(name)
  raise ValueError(f"unknown chat template {name!r}: expected one of {sorted(BUILTIN_TEMPLATES)} or a path "
                   "to a tokenizer_config.json or model directory")


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _validate(messages: Sequence[Message], template_name: str, add_generation_prompt: bool) -> None:
  where = f"render_chat(template {template_name!r})"
  if not messages:
    raise ValueError(f"{where}: empty conversation")
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
      raise ValueError(f"{where}: message {i} must be a mapping with 'role' and 'content', got {message!r}")
    if message["role"] not in ROLES:
      raise ValueError(f"{where}: message {i} has unknown role {message['role']!r}; expected one of {ROLES}")
    if not isinstance(message["content"], str):
      raise ValueError(f"{where}: message {i} content must be a string, "
                       f"got {type(message['content']).__name__}")
  last = messages[-1]["role"]
  if not add_generation_prompt and last != "assistant":
    raise ValueError(f"{where}: a training conversation must end with an assistant message, but the last "
                     f"role is {last!r}; pass add_generation_prompt=True to render an inference prompt")
  if add_generation_prompt and last == "assistant":
    raise ValueError(f"{where}: add_generation_prompt=True renders a prompt for a new assistant reply, but "
                     "the conversation already ends with an assistant message")


def _special_token_id(vocabulary: seqio.Vocabulary, token: str, template_name: str) -> int:
  lookup = getattr(vocabulary, "token_to_id", None)
  if lookup is None:
    raise TypeError(f"chat template {template_name!r} needs special token {token!r}, but "
                    f"{type(vocabulary).__name__} cannot look tokens up; "
                    "use vocabularies.HFTokenizerVocabulary")
  token_id = lookup(token)
  if token_id is None:
    raise ValueError(f"chat template {template_name!r} needs special token {token!r}, which is not in the "
                     f"vocabulary {vocabulary}")
  return int(token_id)


def render_chat(messages: Sequence[Message], template: ChatTemplate | str, vocabulary: seqio.Vocabulary, *,
                add_generation_prompt: bool = False) -> RenderedChat:
  """Renders and tokenizes a conversation; loss weights are 1 on assistant content and turn-end tokens.

  Training: the conversation ends with an assistant message. Inference:
  `add_generation_prompt=True` on a conversation ending with a user message;
  the ids equal the training ids of the same prefix through the assistant header.
  """
  template = get_chat_template(template) if isinstance(template, str) else template
  _validate(messages, template.name, add_generation_prompt)

  # Adjacent text runs of equal weight are encoded together, as one string.
  merged: list[Piece] = []
  for piece in template.pieces(messages, add_generation_prompt):
    if merged and not piece.special and not merged[-1].special and merged[-1].weight == piece.weight:
      merged[-1] = Piece(merged[-1].text + piece.text, piece.weight)
    elif piece.text:
      merged.append(piece)

  ids: list[int] = []
  weights: list[int] = []
  for piece in merged:
    if piece.special:
      piece_ids = [_special_token_id(vocabulary, piece.text, template.name)]
    else:
      for token in template.special_tokens:
        # A special token inside text must come out of the tokenizer as that one
        # token; if the vocabulary lacks it, it would silently become characters.
        if token in piece.text and list(vocabulary.encode(token)) != [
            _special_token_id(vocabulary, token, template.name)]:
          raise ValueError(f"chat template {template.name!r}: special token {token!r} does not encode to a "
                           "single token with this vocabulary; add it to the tokenizer as a special token")
      piece_ids = list(vocabulary.encode(piece.text))
    ids += piece_ids
    weights += [piece.weight] * len(piece_ids)
  return RenderedChat(text="".join(piece.text for piece in merged),
                      token_ids=np.asarray(ids, dtype=np.int32),
                      loss_weights=np.asarray(weights, dtype=np.int32))

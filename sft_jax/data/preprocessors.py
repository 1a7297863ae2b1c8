"""seqio preprocessors shared by the task collections, and the example conversions before them.

Canonical examples (formats.py) become what a task feeds seqio in one of two shapes:
  - text-to-text, for encoder-decoder models: `inputs`/`targets` strings, tokenized by
    seqio and ended with EOS (`text_to_text_features`, `TOKENIZE_AND_APPEND_EOS`);
  - a rendered chat, for decoder-only models: `targets` token ids with per-token
    `loss_weights` (1 on assistant tokens), already tokenized by `chat.render_chat`
    (`chat_features`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import seqio
import tensorflow as tf

from sft_jax.data import chat, vocabularies

# How a flattened conversation names its speakers.
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def text_to_text_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """Output features of a text-to-text task: `inputs` and `targets`, both ending in EOS."""
  vocab = vocabulary or vocabularies.get_vocabulary()
  return {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
  }


def chat_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """Output features of a rendered-chat task: `targets` token ids and their int32 `loss_weights`."""
  return {
      # The chat template ends every assistant turn with its own (weighted) end token; an
      # appended EOS would be a second stop token the model never sees at inference.
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=False),
      "loss_weights": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=0), add_eos=False,
                                    dtype=tf.int32),
  }


# Tokenize the rendered strings (keeping `*_pretokenized` copies for evaluation),
# then append EOS. Trimming to the sequence length happens in the packer, which
# counts truncations instead of hiding them.
TOKENIZE_AND_APPEND_EOS = (
    seqio.preprocessors.tokenize,
    seqio.preprocessors.append_eos_after_trim,
)


def single_turn_text(example: Mapping[str, Any], template: Any | None = None) -> tuple[str, str, list[str]]:
  """(inputs, targets, answer_choices) of a single-turn example, rendered by `template` when given."""
  if template is None:
    choices = example.get("answer_choices") or []
    return str(example["inputs"]), str(example["targets"]), [str(c) for c in choices]
  inputs, targets = template.apply(example)
  return inputs, targets, list(template.answer_choices(example) or [])


def through_last_assistant(messages: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
  """The conversation up to and including its last assistant message (later turns have no answer)."""
  last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
  if last is None:
    raise ValueError("conversation has no assistant message to learn from")
  return list(messages[:last + 1])


def flatten_chat(messages: Sequence[Mapping[str, str]]) -> tuple[str, str]:
  """(inputs, targets) of a conversation for encoder-decoder models.

  The inputs are the turns before the last assistant message, one `Role: content` line
  each ("System: ...", "User: ...", "Assistant: ..."); the target is that message.
  """
  *context, answer = through_last_assistant(messages)
  return "\n".join(f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in context), answer["content"]


def single_turn_chat(inputs: str, targets: str) -> list[dict[str, str]]:
  """A single-turn example as a conversation: the prompt from the user, the target from the assistant."""
  return [{"role": "user", "content": inputs}, {"role": "assistant", "content": targets}]


def render_chat_example(messages: Sequence[Mapping[str, str]], template: chat.ChatTemplate | str,
                        vocabulary: seqio.Vocabulary) -> dict[str, Any]:
  """`targets`, `loss_weights` and `targets_pretokenized` (the rendered text) of a conversation."""
  rendered = chat.render_chat(messages, template, vocabulary)
  if not rendered.loss_weights.any():
    raise ValueError("rendered conversation has no assistant (loss-weighted) tokens")
  return {"targets": rendered.token_ids, "loss_weights": rendered.loss_weights,
          "targets_pretokenized": rendered.text}

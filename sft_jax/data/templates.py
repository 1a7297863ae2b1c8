"""Instruction templates: turn one example into an (inputs, targets) pair of strings.

Every template object offers the same two methods (`ExampleTemplate`):
  `apply(example) -> (inputs, targets)` and `answer_choices(example) -> list[str] | None`.

`Template` is a format string over the instance's fields. `{input}` is the instance
text and `{options}` expands to the FLAN-style options block built from the
instance's `answer_choices`, so classification templates state their label set in
the prompt. Around it sit the FLAN/T0/Super-NI variants: options and no-options
forms (`Template.with_options` / `without_options`), few-shot prompts
(`FewShotTemplate`), chain-of-thought targets (`ChainOfThoughtTemplate`), inverted
templates (`InvertedTemplate`) and the Super-NI encoding (`SuperNITemplate`).
promptsource (P3) Jinja templates live in `sft_jax.data.promptsource`.

Examples may use the raw field names (`input`, `target`) or the canonical ones
(`inputs`, `targets`); templates accept either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import string
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

OPTIONS_HEADER = "OPTIONS:"

# A raw field name and its canonical alias (formats produce `inputs`/`targets`).
_ALIASES = {"input": "inputs", "target": "targets"}


def format_options(answer_choices: Sequence[str]) -> str:
  """Formats answer choices as FLAN does: a header line, then one `- choice` per line."""
  return "\n".join([OPTIONS_HEADER] + [f"- {choice}" for choice in answer_choices])


@runtime_checkable
class ExampleTemplate(Protocol):
  """What every template offers: a name, `apply` and `answer_choices`."""

  name: str

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (inputs, targets) for `example`."""
    ...

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """Returns the candidate targets for rank classification, or None for free text."""
    ...


def get_field(example: Mapping[str, Any], field: str, template_name: str) -> Any:
  """Returns `example[field]` (`inputs`/`targets` stand in for `input`/`target`), else a clear KeyError."""
  if field in example:
    return example[field]
  alias = _ALIASES.get(field)
  if alias is not None and alias in example:
    return example[alias]
  wanted = f"{field!r} (or {alias!r})" if alias else repr(field)
  raise KeyError(f"template {template_name!r}: example has no field {wanted}; "
                 f"fields: {sorted(example)}")


def stable_rng(*parts: object) -> random.Random:
  """A `random.Random` seeded from a SHA-256 of `parts`: the same on every run and machine."""
  # Python's hash() of a str changes per process (PYTHONHASHSEED); sha256 does not.
  digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
  return random.Random(int.from_bytes(digest[:8], "big"))


def _example_choices(example: Mapping[str, Any]) -> list[str] | None:
  choices = example.get("answer_choices")
  return [str(c) for c in choices] if choices is not None and len(choices) else None


def _format_fields(pattern: str) -> set[str]:
  return {f for _, f, _, _ in string.Formatter().parse(pattern) if f}


# ---------------------------------------------------------------------------------------------
# FLAN-style format-string template, with and without the options block.
# ---------------------------------------------------------------------------------------------

# `{options}` with the whitespace that separates it from the text before it (or, at the very
# start of a pattern, after it), so the no-options form leaves no dangling blank lines.
_OPTIONS_BEFORE = re.compile(r"\s*\{options\}")
_OPTIONS_AT_START = re.compile(r"^\{options\}\s*")


@dataclasses.dataclass(frozen=True)
class Template:
  """A named instruction template: `pattern` uses `{input}` and optionally `{options}`."""

  name: str
  pattern: str

  def __post_init__(self):
    fields = _format_fields(self.pattern)
    unknown = fields - {"input", "options", "definition"}
    if unknown:
      raise ValueError(f"template {self.name!r}: unknown fields {sorted(unknown)} in {self.pattern!r}")
    if "input" not in fields:
      raise ValueError(f"template {self.name!r}: pattern must contain {{input}}: {self.pattern!r}")

  @property
  def uses_options(self) -> bool:
    return "{options}" in self.pattern

  def render(self, instance: Mapping[str, object], definition: str = "") -> str:
    """Returns the prompt for `instance` (keys `input`, optional `answer_choices`)."""
    return self._format(instance["input"], instance.get("answer_choices") or (), definition, instance)

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (prompt, target); `{definition}` comes from the example's `definition` field."""
    inputs = self._format(get_field(example, "input", self.name), example.get("answer_choices") or (),
                          example.get("definition") or "", example)
    return inputs, str(get_field(example, "target", self.name))

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """Returns the example's `answer_choices`, or None when it has none."""
    return _example_choices(example)

  def with_options(self) -> Template:
    """The variant that lists the options (FLAN appends them after a blank line)."""
    if self.uses_options:
      return self
    return Template(f"{self.name}_options", self.pattern + "\n\n{options}")

  def without_options(self) -> Template:
    """The variant with the options block (and the whitespace before it) removed."""
    if not self.uses_options:
      return self
    pattern = _OPTIONS_AT_START.sub("", self.pattern)
    pattern = _OPTIONS_BEFORE.sub("", pattern)
    return Template(f"{self.name}_no_options", pattern)

  def _format(self, text: object, choices: Sequence[str], definition: str, instance: Mapping) -> str:
    if self.uses_options and not choices:
      raise ValueError(f"template {self.name!r} needs answer_choices; instance has none: {instance!r}")
    return self.pattern.format(
        input=text,
        options=format_options(choices) if choices else "",
        definition=definition,
    )


# ---------------------------------------------------------------------------------------------
# Few-shot prompts.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FewShotTemplate:
  """Prepends `k` exemplars, rendered by `base`, to the example's own prompt.

  Exemplars are drawn per example from a generator seeded by a SHA-256 of `seed` and the
  example's rendered inputs, so an example gets the same exemplars on every run. An exemplar
  whose rendered inputs equal the example's is never shown (it would give the answer away).
  """

  base: ExampleTemplate
  exemplars: Sequence[Mapping[str, Any]]
  k: int
  seed: int = 0
  exemplar_separator: str = "\n\n"
  joiner: str = " "
  _rendered: tuple[tuple[str, str], ...] = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    if self.k < 0:
      raise ValueError(f"template {self.name!r}: k must be >= 0, got {self.k}")
    if self.k > len(self.exemplars):
      raise ValueError(f"template {self.name!r}: k={self.k} exemplars asked for, "
                       f"pool has {len(self.exemplars)}")
    rendered = []
    for index, exemplar in enumerate(self.exemplars):
      try:
        rendered.append(self.base.apply(exemplar))
      except (KeyError, ValueError) as e:
        raise ValueError(f"template {self.name!r}: exemplar {index} does not render: {e}") from e
    # Rendered once here: every example shares the pool.
    object.__setattr__(self, "_rendered", tuple(rendered))

  @property
  def name(self) -> str:
    return f"{self.base.name}_{self.k}shot"

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (exemplars + prompt, target) for `example`."""
    inputs, targets = self.base.apply(example)
    if self.k == 0:
      return inputs, targets
    shots = [self.joiner.join(pair) for pair in self.select(inputs)]
    return self.exemplar_separator.join(shots + [inputs]), targets

  def select(self, inputs: str) -> list[tuple[str, str]]:
    """Returns the `k` rendered exemplars shown with an example whose rendered inputs are `inputs`."""
    excluded = {i for i, (shot_inputs, _) in enumerate(self._rendered) if shot_inputs == inputs}
    if len(self._rendered) - len(excluded) < self.k:
      raise ValueError(f"template {self.name!r}: needs {self.k} exemplars other than the example "
                       f"itself, pool has {len(self._rendered) - len(excluded)}")
    # Sampling k + |excluded| indices and dropping the excluded ones keeps the draw O(k).
    drawn = stable_rng("few-shot", self.seed, inputs).sample(range(len(self._rendered)),
                                                             self.k + len(excluded))
    return [self._rendered[i] for i in drawn if i not in excluded][:self.k]

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """The base template's answer choices: exemplars do not change the label set."""
    return self.base.answer_choices(example)


# ---------------------------------------------------------------------------------------------
# Chain-of-thought targets.
# ---------------------------------------------------------------------------------------------

DEFAULT_COT_PATTERN = "{rationale} So the answer is {target}."


@dataclasses.dataclass(frozen=True)
class ChainOfThoughtTemplate:
  """`base`'s prompt with a reasoning target: `pattern` over `{rationale}` and `{target}`.

  The rationale comes from the example's `rationale_field`. Targets are free text, not one of
  the answer choices, so `answer_choices` is None (score by parsing the answer instead).
  """

  base: ExampleTemplate
  pattern: str = DEFAULT_COT_PATTERN
  rationale_field: str = "rationale"

  def __post_init__(self):
    fields = _format_fields(self.pattern)
    if fields != {"rationale", "target"}:
      raise ValueError(f"template {self.name!r}: pattern must use exactly {{rationale}} and "
                       f"{{target}}, got {sorted(fields)} in {self.pattern!r}")

  @property
  def name(self) -> str:
    return f"{self.base.name}_cot"

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (base prompt, rationale + answer) for `example`."""
    rationale = example.get(self.rationale_field)
    if rationale is None or not str(rationale).strip():
      raise KeyError(f"template {self.name!r} needs a non-empty {self.rationale_field!r} field; "
                     f"example fields: {sorted(example)}")
    inputs, target = self.base.apply(example)
    return inputs, self.pattern.format(rationale=str(rationale).strip(), target=target)

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """None: a reasoning target is never one of the choices."""
    del example
    return None


# ---------------------------------------------------------------------------------------------
# Inverted templates.
# ---------------------------------------------------------------------------------------------


class _TemplateFields(dict):
  """Format-string fields of an example, with `input`/`target` aliases and a clear error."""

  def __init__(self, example: Mapping[str, Any], template_name: str):
    super().__init__(example)
    self._example = example
    self._template_name = template_name

  def __missing__(self, key: str) -> Any:
    return get_field(self._example, key, self._template_name)


@dataclasses.dataclass(frozen=True)
class InvertedTemplate:
  """FLAN's input inversion: the prompt is built from the answer, the target is the input.

  `pattern` is a format string over the example's fields (typically `{target}`); the new
  target is the example's `target_field` (`input` by default, `inputs` accepted).
  """

  name: str
  pattern: str
  target_field: str = "input"

  def __post_init__(self):
    fields = _format_fields(self.pattern)
    if not fields:
      raise ValueError(f"template {self.name!r}: pattern uses no field: {self.pattern!r}")
    # Either spelling of the new target field would put the answer in the prompt.
    spellings = {self.target_field, _ALIASES.get(self.target_field)}
    spellings |= {raw for raw, alias in _ALIASES.items() if alias == self.target_field}
    leaked = fields & spellings
    if leaked:
      raise ValueError(f"template {self.name!r}: pattern shows the new target field "
                       f"{sorted(leaked)}: {self.pattern!r}")

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (prompt built from the answer, original input)."""
    inputs = self.pattern.format_map(_TemplateFields(example, self.name))
    return inputs, str(get_field(example, self.target_field, self.name))

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """None: the new target (the original input) is free text."""
    del example
    return None


# ---------------------------------------------------------------------------------------------
# Super-NaturalInstructions encoding (Tk-Instruct).
# ---------------------------------------------------------------------------------------------


def _end_sentence(text: str) -> str:
  """Appends a period unless `text` already ends in ASCII punctuation (Super-NI's rule)."""
  return text if text and text[-1] in string.punctuation else text + "."


@dataclasses.dataclass(frozen=True)
class SuperNITemplate:
  """Encodes a Super-NI instance as the Tk-Instruct collator does, character for character.

  Fields: `inputs`, `targets` (a string, or a list of references of which one is chosen per
  example), `definition` (a string or a list whose first item is used), `positive_examples`
  and `negative_examples` (lists of {"input", "output", "explanation"}), and `task_name`
  when `add_task_name`. The collator's token-budget truncation is left to the tokenizer step.
  """

  num_positive: int = 2
  num_negative: int = 0
  add_explanation: bool = False
  add_definition: bool = True
  add_task_name: bool = False

  @property
  def name(self) -> str:
    parts = ["superni"] + (["def"] if self.add_definition else [])
    parts += [f"pos{self.num_positive}", f"neg{self.num_negative}"]
    return "_".join(parts + (["expl"] if self.add_explanation else []))

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (task name + definition + demonstrations + instance prompt, target)."""
    instance_input = str(get_field(example, "input", self.name))
    prompt = "Now complete the following example -\n"
    prompt += _end_sentence(f"Input: {instance_input.strip()}") + "\n" + "Output: "

    task_name = str(get_field(example, "task_name", self.name)) + ". " if self.add_task_name else ""
    definition = ""
    if self.add_definition:
      text = get_field(example, "definition", self.name)
      if isinstance(text, (list, tuple)):
        text = text[0]
      definition = _end_sentence("Definition: " + str(text).strip()) + "\n\n"
    positives = self._demonstrations(example, "positive_examples", "Positive", self.num_positive)
    negatives = self._demonstrations(example, "negative_examples", "Negative", self.num_negative)
    inputs = task_name + definition + "".join(positives) + "".join(negatives) + prompt

    targets = get_field(example, "target", self.name)
    if isinstance(targets, (list, tuple)):
      # The collator draws one reference at random; here the draw is seeded by the input.
      targets = stable_rng("superni-target", instance_input).choice(list(targets))
    return inputs, str(targets)

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """The example's `answer_choices`, or None (Super-NI tasks are scored as generation)."""
    return _example_choices(example)

  def _demonstrations(self, example: Mapping[str, Any], field: str, kind: str, count: int) -> list[str]:
    if count == 0:
      return []
    encoded = []
    for index, demo in enumerate(get_field(example, field, self.name)[:count]):
      text = f" {kind} Example {index + 1} -\n"
      text = _end_sentence(text + f"Input: {str(demo['input']).strip()}") + "\n"
      text = _end_sentence(text + f" Output: {str(demo['output']).strip()}") + "\n"
      if self.add_explanation and "explanation" in demo:
        text = _end_sentence(text + f" Explanation: {str(demo['explanation']).strip()}") + "\n"
      encoded.append(text + "\n")
    return encoded

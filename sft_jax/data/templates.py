"""Instruction templates: render a raw instance into an `inputs` string.

A template is a format string over the instance's fields. `{input}` is the
instance text and `{options}` expands to the FLAN-style options block built from
the instance's `answer_choices`, so classification templates state their label
set in the prompt.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Mapping, Sequence

OPTIONS_HEADER = "OPTIONS:"


def format_options(answer_choices: Sequence[str]) -> str:
  """Formats answer choices as FLAN does: a header line, then one `- choice` per line."""
  return "\n".join([OPTIONS_HEADER] + [f"- {choice}" for choice in answer_choices])


@dataclasses.dataclass(frozen=True)
class Template:
  """A named instruction template: `pattern` uses `{input}` and optionally `{options}`."""

  name: str
  pattern: str

  def __post_init__(self):
    fields = {f for _, f, _, _ in string.Formatter().parse(self.pattern) if f}
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
    choices = instance.get("answer_choices") or ()
    if self.uses_options and not choices:
      raise ValueError(f"template {self.name!r} needs answer_choices; instance has none: {instance!r}")
    return self.pattern.format(
        input=instance["input"],
        options=format_options(choices) if choices else "",
        definition=definition,
    )

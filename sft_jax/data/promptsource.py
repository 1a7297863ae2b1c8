"""promptsource (P3 / T0) templates: load a published `templates.yaml`, render its Jinja.

A promptsource template is Jinja that renders `prompt ||| target` from a raw dataset
record (e.g. super_glue/rte's `premise`, `hypothesis`, `label`), plus an optional Jinja
`answer_choices` expression rendering `choice ||| choice ...`, which the prompt sees as
the list `answer_choices`. Rendering follows promptsource and the P3 pipeline:
  - fields with `-` in their name are renamed with `_` (Jinja cannot name them);
  - `|||` inside a field value is protected, so only the template's own separator splits;
  - every substituted value is cut to `max_var_chars` (promptsource's 2048) with Jinja's
    `truncate`, which leaves values up to 5 characters over the limit alone;
  - an example whose render lacks a prompt or a target is not covered by the template:
    `try_apply` returns None, `applies_to` is False and `apply` raises
    `TemplateNotApplicableError` (P3 drops such examples).
Jinja runs sandboxed (templates come from files); the `choice` and `random` filters draw
from a generator seeded by the template id and the example, so renders are reproducible.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.filters
import jinja2.sandbox
import yaml

from sft_jax.data.templates import stable_rng

# promptsource's separator between prompt and target, and between answer choices.
SEPARATOR = "|||"
# promptsource's default cap on each substituted value (its TEXT_VAR_LENGTH).
PROMPTSOURCE_MAX_VAR_CHARS = 2048
# Stands in for `|||` inside field values while the render is split (private-use characters).
_PIPE_PLACEHOLDER = "\ue000\ue001\ue000"
# Context variable holding the example's generator for the `choice`/`random` filters.
_RNG_VARIABLE = "__sft_jax_rng__"


class TemplateNotApplicableError(ValueError):
  """The template renders no prompt or no target for this example (P3 skips it)."""


@dataclasses.dataclass(frozen=True)
class TemplateMetadata:
  """promptsource's `!TemplateMetadata`; `extra` keeps keys of older files (`_do_eval`...)."""

  original_task: bool | None = None
  choices_in_prompt: bool | None = None
  metrics: tuple[str, ...] | None = None
  languages: tuple[str, ...] | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Jinja environment.
# ---------------------------------------------------------------------------------------------


class _ExampleRng:
  """Builds the seeded generator only when a template draws, since most never do."""

  def __init__(self, template_id: str, example: Mapping[str, Any]):
    self._parts = (template_id, example)
    self._rng = None

  def get(self):
    if self._rng is None:
      template_id, example = self._parts
      fields = repr(sorted(example.items(), key=lambda item: str(item[0])))
      self._rng = stable_rng("promptsource", template_id, fields)
    return self._rng


@jinja2.pass_context
def _choice(context: jinja2.runtime.Context, seq: Sequence[Any]) -> Any:
  """promptsource's `choice` (and Jinja's `random`), drawn from the example's generator."""
  items = list(seq)
  if not items:
    return context.environment.undefined("no choice from an empty sequence")
  return context[_RNG_VARIABLE].get().choice(items)


def _most_frequent(items: Sequence[Any]) -> list[Any] | None:
  """promptsource's `most_frequent`: every item tied for the highest count, first seen first."""
  if not items:
    return None
  counts = collections.Counter(items).most_common()
  return [item for item, count in counts if count == counts[0][1]]


def _highlight(text: Any) -> Any:
  """promptsource's `highlight` colours text in its browser UI; outside it, text is unchanged."""
  return text


@functools.lru_cache(maxsize=None)
def _environment(max_var_chars: int | None) -> jinja2.sandbox.SandboxedEnvironment:
  """A sandboxed environment with promptsource's helpers; one per truncation length."""
  finalize = None
  if max_var_chars is not None:

    @jinja2.pass_environment
    def finalize(environment: jinja2.Environment, value: Any) -> str:
      # promptsource appends `| string | truncate(N)` to every `{{ ... }}`; finalize does that.
      return jinja2.filters.do_truncate(environment, str(value), max_var_chars)

  # Defaults otherwise match promptsource's Environment: plain Undefined, no autoescape,
  # no block trimming, trailing newline dropped.
  environment = jinja2.sandbox.SandboxedEnvironment(finalize=finalize)
  environment.globals["zip"] = zip
  environment.filters.update(choice=_choice, random=_choice, most_frequent=_most_frequent,
                             highlight=_highlight)
  return environment


def _unprotect(text: str) -> str:
  return text.replace(_PIPE_PLACEHOLDER, SEPARATOR)


# ---------------------------------------------------------------------------------------------
# Template.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PromptsourceTemplate:
  """One promptsource template: `jinja` renders `prompt ||| target` from a dataset record."""

  name: str
  jinja: str
  answer_choices_jinja: str | None = None
  id: str = ""
  reference: str = ""
  metadata: TemplateMetadata = dataclasses.field(default_factory=TemplateMetadata)
  dataset: str | None = None
  subset: str | None = None
  max_var_chars: int | None = PROMPTSOURCE_MAX_VAR_CHARS
  _compiled: jinja2.Template = dataclasses.field(init=False, repr=False, compare=False)
  _compiled_choices: jinja2.Template | None = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    # Compiled once, so a syntax error surfaces at load time, not mid-pipeline.
    try:
      compiled = _environment(self.max_var_chars).from_string(self.jinja)
      choices = None
      if self.answer_choices_jinja is not None:
        # promptsource renders answer choices without truncation.
        choices = _environment(None).from_string(self.answer_choices_jinja)
    except jinja2.TemplateSyntaxError as e:
      raise ValueError(f"template {self.name!r} (id {self.id}): Jinja syntax error on line "
                       f"{e.lineno}: {e.message}") from e
    object.__setattr__(self, "_compiled", compiled)
    object.__setattr__(self, "_compiled_choices", choices)

  def answer_choices(self, example: Mapping[str, Any]) -> list[str] | None:
    """Renders `answer_choices` for `example` and splits it on `|||`; None when the template has none."""
    return self._choices(self._context(example), _ExampleRng(self.id, example))

  def try_apply(self, example: Mapping[str, Any]) -> tuple[str, str] | None:
    """Returns (prompt, target), or None when the template renders no prompt or no target."""
    if "answer_choices" in example:
      raise ValueError(f"template {self.name!r}: example has the reserved field 'answer_choices' "
                       "(the template defines it)")
    context = self._context(example)
    rng = _ExampleRng(self.id, example)
    rendered = self._compiled.render(
        {**context, "answer_choices": self._choices(context, rng), _RNG_VARIABLE: rng})
    parts = [_unprotect(part).strip() for part in rendered.split(SEPARATOR)]
    if len(parts) != 2 or not parts[0] or not parts[1]:
      return None
    return parts[0], parts[1]

  def applies_to(self, example: Mapping[str, Any]) -> bool:
    """True when the template renders both a prompt and a target for `example`."""
    return self.try_apply(example) is not None

  def apply(self, example: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (prompt, target); raises `TemplateNotApplicableError` where `try_apply` gives None."""
    result = self.try_apply(example)
    if result is None:
      source = "/".join(p for p in (self.dataset, self.subset) if p) or "promptsource"
      raise TemplateNotApplicableError(
          f"template {self.name!r} ({source}, id {self.id}) renders no prompt or no target for "
          "this example; P3 skips such examples: filter with applies_to() or use try_apply()")
    return result

  def _context(self, example: Mapping[str, Any]) -> dict[str, Any]:
    context = {}
    for key, value in example.items():
      # The P3 pipeline renames `a-b` to `a_b`: Jinja cannot refer to a hyphenated name.
      key = key.replace("-", "_") if isinstance(key, str) else key
      context[key] = value.replace(SEPARATOR, _PIPE_PLACEHOLDER) if isinstance(value, str) else value
    return context

  def _choices(self, context: Mapping[str, Any], rng: _ExampleRng) -> list[str] | None:
    if self._compiled_choices is None:
      return None
    rendered = self._compiled_choices.render({**context, _RNG_VARIABLE: rng})
    return [_unprotect(choice.strip()) for choice in rendered.split(SEPARATOR)]


# ---------------------------------------------------------------------------------------------
# YAML.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tagged:
  """A mapping that carried a promptsource tag; checked and converted after parsing."""

  tag: str
  fields: dict


class _PromptsourceLoader(yaml.SafeLoader):
  """SafeLoader plus promptsource's two tags; no other tag can build an object."""


def _tagged_constructor(tag: str):
  def construct(loader: yaml.SafeLoader, node: yaml.Node) -> _Tagged:
    if not isinstance(node, yaml.MappingNode):
      raise yaml.constructor.ConstructorError(None, None, f"{tag} must tag a mapping", node.start_mark)
    return _Tagged(tag, loader.construct_mapping(node, deep=True))
  return construct


for _tag in ("!Template", "!TemplateMetadata"):
  _PromptsourceLoader.add_constructor(_tag, _tagged_constructor(_tag))


def _tagged_fields(value: Any, tag: str, where: str) -> dict:
  if isinstance(value, _Tagged) and value.tag == tag:
    return value.fields
  if isinstance(value, dict):
    return value  # an untagged mapping with the same fields reads the same
  found = value.tag if isinstance(value, _Tagged) else type(value).__name__
  raise ValueError(f"{where}: expected a {tag} mapping, got {found}")


def _string_list(value: Any, where: str, field: str) -> tuple[str, ...] | None:
  if value is None:
    return None
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{where}: {field} must be a list of strings, got {value!r}")
  return tuple(value)


def _metadata(value: Any, where: str) -> TemplateMetadata:
  if value is None:
    return TemplateMetadata()
  fields = dict(_tagged_fields(value, "!TemplateMetadata", f"{where}: metadata"))
  return TemplateMetadata(
      original_task=fields.pop("original_task", None),
      choices_in_prompt=fields.pop("choices_in_prompt", None),
      metrics=_string_list(fields.pop("metrics", None), where, "metadata.metrics"),
      languages=_string_list(fields.pop("languages", None), where, "metadata.languages"),
      extra=fields,
  )


def _answer_choices_jinja(value: Any, where: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  # Early promptsource files list the choices instead of writing one Jinja expression.
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return f" {SEPARATOR} ".join(value)
  raise ValueError(f"{where}: answer_choices must be a string or a list of strings, got {value!r}")


def _template(key: str, value: Any, path: str, dataset: str | None, subset: str | None,
              max_var_chars: int | None) -> PromptsourceTemplate:
  where = f"{path}: template {key}"
  fields = _tagged_fields(value, "!Template", where)
  name = fields.get("name")
  if not isinstance(name, str) or not name:
    raise ValueError(f"{where}: missing 'name'")
  where += f" ({name!r})"
  jinja = fields.get("jinja")
  if not isinstance(jinja, str):
    problem = "missing 'jinja'" if jinja is None else "'jinja' must be a string"
    raise ValueError(f"{where}: {problem}")
  answer_choices = _answer_choices_jinja(fields.get("answer_choices"), where)
  metadata = _metadata(fields.get("metadata"), where)
  try:
    return PromptsourceTemplate(
        name=name,
        jinja=jinja,
        answer_choices_jinja=answer_choices,
        id=str(fields.get("id") or key),
        reference=str(fields.get("reference") or ""),
        metadata=metadata,
        dataset=dataset,
        subset=subset,
        max_var_chars=max_var_chars,
    )
  except ValueError as e:  # a Jinja syntax error; the message names the template
    raise ValueError(f"{path}: {e}") from e


def load_promptsource_templates(
    path: str | os.PathLike,
    max_var_chars: int | None = PROMPTSOURCE_MAX_VAR_CHARS,
) -> dict[str, PromptsourceTemplate]:
  """Reads a promptsource `templates.yaml`; returns its templates keyed by name.

  `max_var_chars=None` turns off promptsource's truncation of substituted values.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      document = yaml.load(f, Loader=_PromptsourceLoader)  # a SafeLoader subclass
  except yaml.YAMLError as e:
    raise ValueError(f"{path}: malformed promptsource YAML: {e}") from e
  if not isinstance(document, dict) or not isinstance(document.get("templates"), dict):
    raise ValueError(f"{path}: expected a mapping with 'dataset' and a 'templates' mapping")
  dataset, subset = document.get("dataset"), document.get("subset")
  templates: dict[str, PromptsourceTemplate] = {}
  for key, value in document["templates"].items():
    template = _template(str(key), value, path, dataset, subset, max_var_chars)
    if template.name in templates:
      raise ValueError(f"{path}: templates {templates[template.name].id} and {template.id} "
                       f"share the name {template.name!r}")
    templates[template.name] = template
  return templates

"""seqio Tasks from local instruction files, registered with one Python call or one line of gin.

Python:

  files.register_file_task("my_alpaca", "data/alpaca-*.jsonl", "alpaca", validation_fraction=0.05)
  files.register_file_task("task1", "tasks/task1_qa.json", "superni", template=templates.SuperNITemplate())
  files.register_file_task("my_chat", None, "messages", chat_template="chatml", vocabulary=vocab,
                           splits={"train": "chat/train-*.jsonl", "validation": "chat/dev.jsonl"})

gin (a run file imports this module, so `file_tasks` is known while the file is parsed,
and lists its tasks in one binding; they are registered when the tool calls gin.finalize(),
after every binding is read):

  import sft_jax.data.collections.files
  file_tasks.tasks = [{'name': 'my_alpaca', 'paths': 'data/alpaca.jsonl', 'fmt': 'alpaca', 'validation_fraction': 0.05}]
  MIXTURE_OR_TASK_NAME = 'my_alpaca'

Each dict holds `register_file_task`'s arguments by name; templates are references such as
`'template': @SuperNITemplate()` (Template, SuperNITemplate, ChainOfThoughtTemplate and
InvertedTemplate are gin-configurable from here).

What a task yields, per split:
  - single-turn examples: `inputs`/`targets` strings (the canonical ones, or `template.apply`),
    tokenized with EOS, plus `answer_choices` (for rank classification), `id` and `template`;
  - chat examples without `chat_template`: the same, flattened (preprocessors.flatten_chat);
  - with `chat_template`, every example is a conversation (single-turn ones as user/assistant)
    tokenized by chat.render_chat for decoder-only models: `targets` ids and `loss_weights`.

Splits: `paths` alone gives one "train" split; `validation_fraction` moves a deterministic
share of the examples to "validation", chosen by a SHA-256 of `seed` and the example's id (its
content when it has none), so an example stays in its split whatever the file order; `splits`
maps split names to files instead. Files are read, checked and rendered at the first read of
the task (not at import): a bad record raises the reader's `file:line` error there.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from sft_jax.data import chat, formats, preprocessors, promptsource, templates, vocabularies
from sft_jax.evaluation import metrics as metrics_lib

PathsArg = str | os.PathLike | Sequence[str | os.PathLike]

TRAIN, VALIDATION = "train", "validation"
_GLOB_CHARS = frozenset("*?[")
# A two-turn conversation every chat template renders: checks template and vocabulary at registration.
_PROBE_CHAT = preprocessors.single_turn_chat("Hi", "Hello")

for _cls in (templates.Template, templates.SuperNITemplate, templates.ChainOfThoughtTemplate,
             templates.InvertedTemplate):
  gin.external_configurable(_cls, module=__name__)
del _cls


class _DropUncachedFunctionWarning(logging.Filter):
  """seqio warns that uncached function sources reshuffle badly on restart; file tasks are
  read in a fixed order and the trainer replays its stream exactly on resume."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedFunctionWarning())


# ----- Arguments -----


def expand_paths(paths: PathsArg, what: str) -> tuple[str, ...]:
  """The files named by a path, a glob or a list of them (globs sorted); missing files raise."""
  items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not items:
    raise ValueError(f"{what}: no paths given")
  files = []
  for item in map(os.fspath, items):
    if os.path.isfile(item):
      files.append(item)
    elif _GLOB_CHARS & set(item):
      matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
      if not matches:
        raise FileNotFoundError(f"{what}: no file matches {item!r}")
      files += matches
    else:
      raise FileNotFoundError(f"{what}: no such file: {item!r}")
  return tuple(files)


def known_metrics() -> dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, float]]]:
  """The metric functions of sft_jax.evaluation.metrics by name: those with seqio's (targets, predictions)."""
  found = {}
  for name, fn in vars(metrics_lib).items():
    if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != metrics_lib.__name__:
      continue
    if list(inspect.signature(fn).parameters)[:2] == ["targets", "predictions"]:
      found[name] = fn
  return found


def _metric_fns(names: Sequence[str | Callable], task: str) -> list[Callable]:
  known = known_metrics()
  fns = []
  for metric in [names] if isinstance(names, str) else names:
    if callable(metric):
      fns.append(metric)
    elif metric in known:
      fns.append(known[metric])
    else:
      raise ValueError(f"file task {task!r}: unknown metric {metric!r}; known metrics: {', '.join(sorted(known))}")
  return fns


def _templates(template: Any, task: str) -> tuple[Any, ...]:
  if template is None:
    return ()
  chosen = tuple(template) if isinstance(template, (list, tuple)) else (template,)
  for t in chosen:
    if not (callable(getattr(t, "apply", None)) and callable(getattr(t, "answer_choices", None))):
      raise TypeError(f"file task {task!r}: template {t!r} has no apply(example)/answer_choices(example); "
                      "pass a templates.py or promptsource template object")
  if not chosen:
    raise ValueError(f"file task {task!r}: empty template list; pass None for the examples as read")
  return chosen


def split_of(example: Mapping[str, Any], validation_fraction: float, seed: int = 0) -> str:
  """"validation" for a deterministic `validation_fraction` of examples, else "train".

  The draw is a SHA-256 of `seed` and the example's task and id (its inputs/targets or
  messages when it has no id): the same example lands in the same split on every run,
  whatever the file order, and duplicated records never straddle the split.
  """
  if "id" in example:
    key = ["id", example.get("task", ""), str(example["id"])]
  else:
    key = ["content", example.get("inputs"), example.get("targets"), example.get("messages")]
  digest = hashlib.sha256(json.dumps([seed, key], sort_keys=True).encode("utf-8")).digest()
  return VALIDATION if int.from_bytes(digest[:8], "big") / 2.0**64 < validation_fraction else TRAIN


# ----- The data source -----


def _output_signature(tokenized: bool) -> dict[str, tf.TensorSpec]:
  common = {"answer_choices": tf.TensorSpec([None], tf.string), "id": tf.TensorSpec([], tf.string),
            "template": tf.TensorSpec([], tf.string)}
  if tokenized:
    return {"targets": tf.TensorSpec([None], tf.int32), "loss_weights": tf.TensorSpec([None], tf.int32),
            "targets_pretokenized": tf.TensorSpec([], tf.string), **common}
  return {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string), **common}


class LocalFilesSource(seqio.FunctionDataSource):
  """A seqio source over local instruction files, read and rendered once, on first use."""

  def __init__(self, task: str, files: Mapping[str, tuple[str, ...]], fmt: str, *,
               example_templates: tuple[Any, ...], validation_fraction: float, seed: int, skip_invalid: bool,
               oasst_paths: str, chat_template: chat.ChatTemplate | None, vocabulary: seqio.Vocabulary):
    self.task, self.files, self.fmt = task, dict(files), fmt
    self._templates, self._validation_fraction, self._seed = example_templates, validation_fraction, seed
    self._skip_invalid, self._oasst_paths = skip_invalid, oasst_paths
    self._chat_template, self._vocabulary = chat_template, vocabulary
    self._examples: dict[str, list[dict]] | None = None
    splits = (TRAIN, VALIDATION) if validation_fraction > 0 else tuple(self.files)
    super().__init__(self._dataset_fn, splits=splits, caching_permitted=False)

  def num_input_examples(self, split: str) -> int:
    """The number of examples of `split` (reads the files on first use)."""
    return len(self.examples(split))

  def examples(self, split: str) -> list[dict]:
    """The rendered examples of `split`, in file order."""
    if self._examples is None:
      self._examples = self._load()
    if split not in self._examples:
      raise ValueError(f"file task {self.task!r} has no split {split!r}; splits: {list(self._examples)}")
    return self._examples[split]

  def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # the order is the files'; seqio shuffles examples
    # Read here, in Python, so that a bad record raises its own error rather than a tf.data one.
    examples = self.examples(split)
    return tf.data.Dataset.from_generator(lambda: iter(examples),
                                          output_signature=_output_signature(self._chat_template is not None))

  def _load(self) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {split: [] for split in self.splits}
    not_covered = 0
    for file_split, paths in self.files.items():
      for path in paths:
        examples = formats.read_examples(path, self.fmt, skip_invalid=self._skip_invalid,
                                         oasst_paths=self._oasst_paths)
        for index, example in enumerate(examples):
          try:
            rendered = self._render(example)
          except promptsource.TemplateNotApplicableError:
            not_covered += 1  # P3 drops examples a promptsource template does not cover
            continue
          except (KeyError, ValueError, TypeError) as e:
            where = f"example {index}" + (f" (id {example['id']!r})" if "id" in example else "")
            what = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) adds quotes
            raise ValueError(f"{path}: {where}: {what}") from e
          split = file_split
          if self._validation_fraction:
            split = split_of(example, self._validation_fraction, self._seed)
          out[split].append(rendered)
    if not_covered:
      logging.warning("file task %r: %d examples not covered by their promptsource template were left out",
                      self.task, not_covered)
    for split, examples in out.items():
      if not examples:
        logging.warning("file task %r: split %r has no examples", self.task, split)
    return out

  def _pick_template(self, example: Mapping[str, Any]) -> Any | None:
    if len(self._templates) <= 1:
      return self._templates[0] if self._templates else None
    # One template per example, the same on every run (FLAN draws one per example too).
    key = example.get("id", json.dumps([example.get("inputs"), example.get("messages")]))
    return templates.stable_rng("file-task-template", self._seed, key).choice(self._templates)

  def _render(self, example: Mapping[str, Any]) -> dict[str, Any]:
    template = self._pick_template(example)
    common = {"id": str(example.get("id", "")), "template": getattr(template, "name", "")}
    if "messages" in example:
      if template is not None:
        raise ValueError(f"template {template.name!r} renders single-turn examples; this is a chat "
                         "example (use chat_template, or no template to flatten it)")
      messages = preprocessors.through_last_assistant(example["messages"])
      choices = [str(c) for c in example.get("answer_choices") or []]
      if self._chat_template is None:
        inputs, targets = preprocessors.flatten_chat(messages)
        return {"inputs": inputs, "targets": targets, "answer_choices": choices, **common}
    else:
      inputs, targets, choices = preprocessors.single_turn_text(example, template)
      if not targets.strip():
        raise ValueError(f"template {common['template']!r} renders an empty target")
      if self._chat_template is None:
        return {"inputs": inputs, "targets": targets, "answer_choices": choices, **common}
      messages = preprocessors.single_turn_chat(inputs, targets)
    rendered = preprocessors.render_chat_example(messages, self._chat_template, self._vocabulary)
    common["template"] = self._chat_template.name
    return {**rendered, "answer_choices": choices, **common}


# ----- Registration -----


def register_file_task(name: str, paths: PathsArg | None, fmt: str, *, template: Any = None,
                       metrics: Sequence[str | Callable] = ("exact_match",),
                       splits: Mapping[str, PathsArg] | None = None, validation_fraction: float = 0.0,
                       seed: int = 0, skip_invalid: bool = False,
                       chat_template: chat.ChatTemplate | str | None = None,
                       vocabulary: seqio.Vocabulary | None = None, oasst_paths: str = "best",
                       overwrite: bool = False) -> seqio.Task:
  """Registers the seqio Task `name` over local `fmt` files (see the module docstring)."""
  if name in seqio.MixtureRegistry.names() or (name in seqio.TaskRegistry.names() and not overwrite):
    raise ValueError(f"file task {name!r}: a task or mixture of that name is already registered"
                     + ("" if name in seqio.MixtureRegistry.names() else "; pass overwrite=True to replace it"))
  if fmt not in formats.FORMATS:
    raise ValueError(f"file task {name!r}: unknown format {fmt!r}; known formats: {', '.join(formats.FORMATS)}")
  if oasst_paths not in formats.OASST_PATHS:
    raise ValueError(f"file task {name!r}: oasst_paths must be one of {formats.OASST_PATHS}, got {oasst_paths!r}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"file task {name!r}: validation_fraction must be in [0, 1), got {validation_fraction}")
  if (paths is None) == (splits is None):
    raise ValueError(f"file task {name!r}: pass either paths or splits={{split: paths}}, not both or neither")
  if splits is not None and validation_fraction:
    raise ValueError(f"file task {name!r}: validation_fraction splits `paths`; with splits= name the "
                     "validation files instead")
  if splits is not None and not splits:
    raise ValueError(f"file task {name!r}: splits is empty")
  files = ({TRAIN: expand_paths(paths, f"file task {name!r}")} if splits is None else
           {split: expand_paths(p, f"file task {name!r}, split {split!r}") for split, p in splits.items()})
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  if isinstance(chat_template, str):
    chat_template = chat.get_chat_template(chat_template)
  if chat_template is not None:
    try:
      preprocessors.render_chat_example(_PROBE_CHAT, chat_template, vocabulary)
    except (TypeError, ValueError) as e:
      raise ValueError(f"file task {name!r}: chat template {chat_template.name!r} does not work with "
                       f"vocabulary {vocabulary}: {e}") from e
  source = LocalFilesSource(
      name, files, fmt, example_templates=_templates(template, name), validation_fraction=validation_fraction,
      seed=seed, skip_invalid=skip_invalid, oasst_paths=oasst_paths, chat_template=chat_template,
      vocabulary=vocabulary)
  if chat_template is None:
    features = preprocessors.text_to_text_features(vocabulary)
    steps = list(preprocessors.TOKENIZE_AND_APPEND_EOS)
  else:
    features, steps = preprocessors.chat_features(vocabulary), []  # rendered and tokenized by the source
  metric_fns = _metric_fns(metrics, name)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=source, output_features=features, preprocessors=steps,
                                metric_fns=metric_fns)


@gin.configurable
def file_tasks(tasks: Sequence[Mapping[str, Any]] = ()) -> list[str]:
  """Registers one file task per dict of `register_file_task` arguments; returns their names."""
  names = []
  for i, spec in enumerate(tasks):
    spec = dict(spec)
    missing = [key for key in ("name", "fmt") if key not in spec]
    if missing:
      raise ValueError(f"file_tasks.tasks[{i}]: missing {missing}; each task needs name, fmt and paths or splits")
    name, fmt, paths = spec.pop("name"), spec.pop("fmt"), spec.pop("paths", None)
    unknown = set(spec) - set(inspect.signature(register_file_task).parameters)
    if unknown:
      raise ValueError(f"file_tasks.tasks[{i}] ({name!r}): unknown keys {sorted(unknown)}")
    register_file_task(name, paths, fmt, **spec)
    names.append(name)
  return names


def _register_gin_file_tasks(config: Any) -> None:
  """Finalize hook: registers the tasks bound to `file_tasks.tasks`, once every binding is parsed."""
  del config
  file_tasks()


gin.config.register_finalize_hook(_register_gin_file_tasks)


def parse_file_task_flag(flag: str) -> tuple[str, str, str]:
  """Splits a `NAME=PATH:FMT` command-line value into (name, path, format)."""
  name, sep, rest = flag.partition("=")
  path, colon, fmt = rest.rpartition(":")
  if not (name and sep and path and colon and fmt):
    raise ValueError(f"expected NAME=PATH:FMT (formats: {', '.join(formats.FORMATS)}), got {flag!r}")
  return name, path, fmt

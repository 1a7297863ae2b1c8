"""T0 (Sanh et al., 2022): its training mixture and held-out evaluation over TFDS, prompted by promptsource templates.

Importing this module registers:
  `t0.<dataset>`       one task per dataset (its TFDS name, `/` written `.`: `t0.super_glue.rte`); every
                       example is rendered by each of the dataset's templates that applies to it, as in P3,
                       and carries the `template` name and that template's `answer_choices`
  `t0.<dataset>.eval`  for a few training datasets, their held-out split rendered by the original-task
                       classification templates: the seen tasks of the evaluation
  `t0_train`           the training mixture, examples-proportional as T0: a dataset's rate is its number of
                       prompted examples (train examples x templates) capped at 500,000
and the held-out split of `t0_train`: T0's held-out datasets (clusters nli, coreference,
sentence_completion, word_sense) plus the seen tasks above.

Held-out evaluation, as T0: anli r1/r2/r3, super_glue cb and rte (nli); super_glue wsc.fixed,
winogrande (coreference); super_glue copa, hellaswag, story_cloze 2016 (sentence_completion);
super_glue wic (word_sense). Every evaluation task is scored by rank classification over its
`answer_choices` with the templates not marked `original_task: false` (T0 evaluated the prompts of the
original task); the report gives each task's median over prompts (T0) and mean (FLAN). T0 reports the
validation splits (SuperGLUE hides its test labels), so an evaluation task's `validation` and `test`
splits both read the dataset's validation split, and the evaluator's default split gives T0's numbers.

Training datasets, by T0 cluster, as TFDS 4.9 has them (checked with `tfds.list_builders()` and each
builder's `info.features`), and the T0 datasets TFDS lacks:
  multiple-choice QA  cosmos_qa, cos_e (T0's CommonsenseQA prompts), qasc; lacks dream, quail, quartz,
                      quarel, social_i_qa, sciq, wiqa, wiki_hop
  extractive QA       squad v1.1, standing in for adversarial_qa, quoref, ropes, duorc (none in TFDS;
                      MRQA's DuoRC has no train split; T0+ trains on SQuAD)
  closed-book QA      mrqa/hotpot_qa (MRQA's copy of HotpotQA; the prompts leave out its context);
                      lacks wiki_qa
  structure-to-text   wiki_bio; lacks common_gen
  sentiment           imdb_reviews, yelp_polarity_reviews (T0 used Yelp's 5-star version); lacks
                      amazon_polarity, app_reviews, rotten_tomatoes (amazon_us_reviews' files are withdrawn)
  summarization       cnn_dailymail, gigaword, multi_news, samsum, xsum
  topic               ag_news_subset, trec; lacks dbpedia_14
  paraphrase          glue/mrpc, glue/qqp, paws_wiki (labeled_final)

Manual downloads: TFDS cannot fetch story_cloze (fill in the form at
https://www.cs.rochester.edu/nlp/rocstories/, save the 2016 files as cloze_test_val__spring2016.csv and
cloze_test_test__spring2016.csv), samsum (corpus.7z from arXiv 1911.12237: train.json, val.json,
test.json) and xsum (xsum-extracts-from-downloads.tar.gz, built by the XSum repository's script). Put
the files in `<tfds data_dir>/downloads/manual/`; each builder's MANUAL_DOWNLOAD_INSTRUCTIONS says more.
Every other dataset downloads and prepares itself on first read.

Templates are promptsource `templates.yaml` files, looked up per dataset as
`<folder>/<dataset>/templates.yaml` (every config) and then `<folder>/<dataset>/<config>/templates.yaml`,
first in this package's `t0_templates/` (written for these TFDS features; TFDS field names differ from
Hugging Face's) and then in each user folder, in order: the gin macro `T0_TEMPLATE_DIRS`, or
`set_template_dirs`. A template replaces the one of the same name read before it; others are added.
Templates are read when a task's dataset is built, so user folders apply to tasks registered earlier.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from sft_jax.data import mixtures, preprocessors
from sft_jax.data.promptsource import PromptsourceTemplate, load_promptsource_templates
from sft_jax.evaluation import metrics

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "t0_templates")
TEMPLATES_FILE = "templates.yaml"
TEMPLATE_DIRS_MACRO = "T0_TEMPLATE_DIRS"
TASK_PREFIX = "t0."
EVAL_SUFFIX = ".eval"
MIXTURE_NAME = "t0_train"
# T0 treats a dataset with more prompted examples than this as having this many.
MIXTURE_CAP = 500_000
HELDOUT_CLUSTERS = ("nli", "coreference", "sentence_completion", "word_sense")
# What `render_prompts` renders for: every template, or those rank classification can score.
TRAIN, EVAL = "train", "eval"


@dataclasses.dataclass(frozen=True)
class T0Dataset:
  """One dataset of T0's collection as TFDS holds it."""

  tfds_name: str  # name, config and version: "super_glue/rte:1.0.2"
  cluster: str
  splits: Mapping[str, str]  # seqio split -> TFDS split
  # The TFDS catalog's train size: the mixing rate before the dataset is prepared.
  train_examples: int = 0
  # The TFDS split a training dataset's seen evaluation task reads; None: not evaluated.
  eval_split: str | None = None

  @property
  def key(self) -> str:
    """The TFDS name without version ("super_glue/rte"): the dataset's template folder."""
    return self.tfds_name.split(":")[0]

  @property
  def task_name(self) -> str:
    return TASK_PREFIX + self.key.replace("/", ".")


def _splits(*names: str) -> dict[str, str]:
  return {name: name for name in names}


# Evaluation tasks read the split T0 reports under both split names (see the module docstring).
_VALIDATION_AS_TEST = {"validation": "validation", "test": "validation"}

TRAIN_DATASETS = (
    T0Dataset("cosmos_qa:1.0.0", "multiple_choice_qa", _splits("train", "validation"), 25_262, "validation"),
    T0Dataset("cos_e:0.0.1", "multiple_choice_qa", _splits("train", "validation"), 9_741),
    T0Dataset("qasc:0.1.0", "multiple_choice_qa", _splits("train", "validation"), 8_134),
    T0Dataset("squad/v1.1:3.0.0", "extractive_qa", _splits("train", "validation"), 87_599),
    T0Dataset("mrqa/hotpot_qa:1.0.0", "closed_book_qa", _splits("train", "validation"), 72_928),
    T0Dataset("wiki_bio:0.1.0", "structure_to_text", _splits("train", "validation"), 582_659),
    T0Dataset("imdb_reviews/plain_text:1.0.0", "sentiment", _splits("train", "test"), 25_000, "test"),
    T0Dataset("yelp_polarity_reviews:0.2.0", "sentiment", _splits("train", "test"), 560_000),
    T0Dataset("cnn_dailymail:3.4.0", "summarization", _splits("train", "validation"), 287_113),
    T0Dataset("gigaword:1.2.0", "summarization", _splits("train", "validation"), 3_803_957),
    T0Dataset("multi_news:2.1.0", "summarization", _splits("train", "validation"), 44_972),
    T0Dataset("samsum:1.0.0", "summarization", _splits("train", "validation"), 14_732),
    T0Dataset("xsum:1.1.0", "summarization", _splits("train", "validation"), 203_577),
    T0Dataset("ag_news_subset:1.0.0", "topic_classification", _splits("train", "test"), 120_000, "test"),
    T0Dataset("trec:1.0.0", "topic_classification", _splits("train", "test"), 5_452),
    T0Dataset("glue/mrpc:2.0.0", "paraphrase", _splits("train", "validation"), 3_668, "validation"),
    T0Dataset("glue/qqp:2.0.0", "paraphrase", _splits("train", "validation"), 363_846),
    T0Dataset("paws_wiki/labeled_final_raw:1.1.0", "paraphrase", _splits("train", "validation"), 49_401,
              "validation"),
)

HELDOUT_DATASETS = (
    T0Dataset("anli/r1:0.1.0", "nli", _VALIDATION_AS_TEST),
    T0Dataset("anli/r2:0.1.0", "nli", _VALIDATION_AS_TEST),
    T0Dataset("anli/r3:0.1.0", "nli", _VALIDATION_AS_TEST),
    T0Dataset("super_glue/cb:1.0.2", "nli", _VALIDATION_AS_TEST),
    T0Dataset("super_glue/rte:1.0.2", "nli", _VALIDATION_AS_TEST),
    T0Dataset("super_glue/wsc.fixed:1.0.2", "coreference", _VALIDATION_AS_TEST),
    T0Dataset("winogrande:1.2.0", "coreference", _VALIDATION_AS_TEST),
    T0Dataset("super_glue/copa:1.0.2", "sentence_completion", _VALIDATION_AS_TEST),
    T0Dataset("hellaswag:1.1.0", "sentence_completion", _VALIDATION_AS_TEST),
    T0Dataset("story_cloze/2016:1.0.0", "sentence_completion", _VALIDATION_AS_TEST),
    T0Dataset("super_glue/wic:1.0.2", "word_sense", _VALIDATION_AS_TEST),
)

_TRAIN_BY_TASK = {d.task_name: d for d in TRAIN_DATASETS}


# ---------------------------------------------------------------------------------------------
# Templates.
# ---------------------------------------------------------------------------------------------

_user_template_dirs: tuple[str, ...] | None = None


def set_template_dirs(dirs: Sequence[str | os.PathLike] | None) -> None:
  """Sets the user template folders; None goes back to the `T0_TEMPLATE_DIRS` gin macro."""
  global _user_template_dirs
  _user_template_dirs = None if dirs is None else tuple(os.fspath(d) for d in dirs)


def template_dirs() -> tuple[str, ...]:
  """The user template folders: those of `set_template_dirs`, else the `T0_TEMPLATE_DIRS` gin macro."""
  if _user_template_dirs is not None:
    dirs = _user_template_dirs
  else:
    try:
      dirs = tuple(os.fspath(d) for d in gin.query_parameter(f"%{TEMPLATE_DIRS_MACRO}") or ())
    except ValueError:  # the macro is not bound
      dirs = ()
  missing = [d for d in dirs if not os.path.isdir(d)]
  if missing:
    raise FileNotFoundError(f"T0 template folders not found: {missing}")
  return dirs


@functools.lru_cache(maxsize=None)
def _read_templates(path: str, mtime_ns: int) -> dict[str, PromptsourceTemplate]:
  del mtime_ns  # part of the cache key: an edited file is read again
  return load_promptsource_templates(path)


def template_files(dataset_key: str, dirs: Sequence[str]) -> list[str]:
  """The template files of a dataset in the order they apply: per folder, the dataset's, then its config's."""
  dataset, _, config = dataset_key.partition("/")
  candidates = [(dataset,)] + ([(dataset, config)] if config else [])
  return [path for folder in dirs for parts in candidates
          if os.path.isfile(path := os.path.join(folder, *parts, TEMPLATES_FILE))]


def templates(dataset_key: str, dirs: Sequence[str] | None = None) -> dict[str, PromptsourceTemplate]:
  """A dataset's templates by name: the package's, then the user folders' (a name read later wins).

  `dirs` replaces the user folders (`template_dirs()` by default).
  """
  dirs = (TEMPLATES_DIR, *(template_dirs() if dirs is None else dirs))
  found: dict[str, PromptsourceTemplate] = {}
  for path in template_files(dataset_key, dirs):
    found.update(_read_templates(path, os.stat(path).st_mtime_ns))
  if not found:
    raise ValueError(f"no T0 templates for {dataset_key!r} in {list(dirs)} (expected "
                     f"<folder>/{dataset_key}/{TEMPLATES_FILE} or its dataset's folder)")
  return found


def eval_templates(dataset_key: str) -> list[PromptsourceTemplate]:
  """The templates an evaluation scores: all but those marked `original_task: false`, each with choices."""
  chosen = [t for t in templates(dataset_key).values() if t.metadata.original_task is not False]
  if not chosen:
    raise ValueError(f"{dataset_key}: every template is marked original_task: false; none to evaluate")
  no_choices = [t.name for t in chosen if t.answer_choices_jinja is None]
  if no_choices:
    raise ValueError(f"{dataset_key}: evaluation templates {no_choices} have no answer_choices (rank "
                     "classification needs them); mark them original_task: false to train on them only")
  return chosen


# ---------------------------------------------------------------------------------------------
# Rendering inside tf.data.
# ---------------------------------------------------------------------------------------------


def _python_value(value: Any) -> Any:
  """A numpy value from TF as plain Python: text as str, arrays as lists."""
  if isinstance(value, (bytes, np.bytes_)):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return _python_value(value.item()) if value.ndim == 0 else [_python_value(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _ragged_lists(flat_values: np.ndarray, nested_row_splits: Sequence[np.ndarray]) -> list:
  """A ragged tensor's components back as nested Python lists."""
  rows = [_python_value(v) for v in flat_values]
  for splits in reversed(nested_row_splits):
    rows = [rows[start:end] for start, end in zip(splits[:-1], splits[1:])]
  return rows


def _components(value: tf.Tensor | tf.RaggedTensor) -> list[tf.Tensor]:
  # numpy_function takes dense tensors only: a ragged feature (a TFDS sequence of sequences)
  # crosses as its flat values and row splits.
  if isinstance(value, tf.RaggedTensor):
    return [value.flat_values, *value.nested_row_splits]
  return [value]


class _PromptRenderer:
  """Renders one raw example with every template, in Python; called through `tf.numpy_function`."""

  def __init__(self, dataset_key: str, chosen: Sequence[PromptsourceTemplate], element_spec: Any,
               check_choices: bool):
    self.dataset_key = dataset_key
    self.templates = tuple(chosen)
    self.structure = element_spec
    self.ragged_ranks = [spec.ragged_rank if isinstance(spec, tf.RaggedTensorSpec) else None
                         for spec in tf.nest.flatten(element_spec)]
    self.check_choices = check_choices

  def _example(self, arrays: Sequence[np.ndarray]) -> dict:
    leaves, position = [], 0
    for ragged_rank in self.ragged_ranks:
      if ragged_rank is None:
        leaves.append(_python_value(arrays[position]))
        position += 1
      else:
        leaves.append(_ragged_lists(arrays[position], arrays[position + 1:position + 1 + ragged_rank]))
        position += 1 + ragged_rank
    return tf.nest.pack_sequence_as(self.structure, leaves)

  def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    example = self._example(arrays)
    inputs, targets, names, choices, counts = [], [], [], [], []
    for template in self.templates:
      rendered = template.try_apply(example)
      if rendered is None:  # P3 leaves out the examples a template does not cover
        continue
      options = template.answer_choices(example) or []
      if self.check_choices and rendered[1] not in options:
        raise ValueError(f"{self.dataset_key}: template {template.name!r} renders the target "
                         f"{rendered[1]!r}, which is not one of its answer_choices {options}")
      inputs.append(rendered[0].encode())
      targets.append(rendered[1].encode())
      names.append(template.name.encode())
      choices += [option.encode() for option in options]
      counts.append(len(options))
    as_bytes = lambda items: np.array(items, dtype=object).reshape(len(items))
    return (as_bytes(inputs), as_bytes(targets), as_bytes(names), as_bytes(choices),
            np.array(counts, dtype=np.int64))

  def rows(self, example: Mapping[str, Any]) -> dict[str, tf.Tensor | tf.RaggedTensor]:
    """The example's rendered rows as a batch: one per template that applies."""
    arrays = [c for leaf in tf.nest.flatten(example) for c in _components(leaf)]
    inputs, targets, names, choices, counts = tf.numpy_function(
        self, arrays, [tf.string, tf.string, tf.string, tf.string, tf.int64], stateful=False)
    for tensor in (inputs, targets, names, choices, counts):
      tensor.set_shape([None])
    return {"inputs": inputs, "targets": targets, "template": names,
            "answer_choices": tf.RaggedTensor.from_row_lengths(choices, counts)}


def render_prompts(dataset: tf.data.Dataset, dataset_key: str, purpose: str = TRAIN) -> tf.data.Dataset:
  """A seqio preprocessor: each raw example rendered by every template of `dataset_key` that applies.

  Rows have `inputs`, `targets`, `template` (its name) and `answer_choices` (none for a free-text
  template). `purpose` TRAIN uses every template; EVAL the evaluation templates (`eval_templates`),
  and a row whose target is not one of its answer choices is an error.
  """
  if purpose not in (TRAIN, EVAL):
    raise ValueError(f"purpose must be {TRAIN!r} or {EVAL!r}, got {purpose!r}")
  # Read here, when the task's dataset is built: user template folders set after import apply.
  chosen = eval_templates(dataset_key) if purpose == EVAL else list(templates(dataset_key).values())
  renderer = _PromptRenderer(dataset_key, chosen, dataset.element_spec, check_choices=purpose == EVAL)
  return dataset.map(renderer.rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


# ---------------------------------------------------------------------------------------------
# Tasks, mixture and held-out split.
# ---------------------------------------------------------------------------------------------


class TfdsSource(seqio.TfdsDataSource):
  """seqio's TFDS source, with unknown split sizes reported as None instead of a KeyError.

  A dataset not prepared yet, or replaced by `tfds.testing.mock_data`, has no split metadata;
  seqio only uses the sizes to decide on in-memory caching and sharding, and the mixing rate
  falls back to the TFDS catalog's size.
  """

  def num_input_examples(self, split: str) -> int | None:
    try:
      return super().num_input_examples(split)
    except KeyError:
      return None

  def list_shards(self, split: str) -> Sequence[str]:
    try:
      return super().list_shards(split)
    except KeyError:
      return [split]  # read as one shard: TFDS prepares the dataset when it is first loaded


@dataclasses.dataclass(frozen=True)
class PromptedExamplesRate:
  """T0's mixing rate, a seqio rate callable: the dataset's train examples x its templates, capped.

  The train size is TFDS's once the dataset is prepared, the catalog's (`T0Dataset.train_examples`)
  before; the templates are those in effect when the mixture is read (user folders included).
  """

  cap: int = MIXTURE_CAP

  def __call__(self, task: seqio.Task) -> float:
    dataset = _TRAIN_BY_TASK.get(task.name)
    if dataset is None:
      raise ValueError(f"PromptedExamplesRate rates T0 training tasks; {task.name!r} is not one")
    size = task.source.num_input_examples("train") or dataset.train_examples
    return float(min(size * len(templates(dataset.key)), self.cap))


def _register_task(name: str, dataset: T0Dataset, splits: Mapping[str, str], purpose: str) -> None:
  render = functools.partial(render_prompts, dataset_key=dataset.key, purpose=purpose)
  seqio.TaskRegistry.add(
      name,
      source=TfdsSource(dataset.tfds_name, splits=dict(splits)),
      output_features=preprocessors.text_to_text_features(),
      # Cached offline (tools/cache_tasks.py) after tokenizing; EOS is appended when read.
      preprocessors=[render, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      metric_fns=[metrics.accuracy] if purpose == EVAL else [],
  )


def register() -> None:
  """Registers every T0 task, the `t0_train` mixture and its held-out split."""
  eval_tasks = []
  for dataset in TRAIN_DATASETS:
    _register_task(dataset.task_name, dataset, dataset.splits, TRAIN)
    if dataset.eval_split is not None:
      name = dataset.task_name + EVAL_SUFFIX
      splits = {"validation": dataset.eval_split, "test": dataset.eval_split}
      _register_task(name, dataset, splits, EVAL)
      eval_tasks.append(mixtures.EvalTask(name, dataset.cluster, False, "classification"))
  for dataset in HELDOUT_DATASETS:
    _register_task(dataset.task_name, dataset, dataset.splits, EVAL)
    eval_tasks.append(mixtures.EvalTask(dataset.task_name, dataset.cluster, True, "classification"))
  mixtures.register_mixture(MIXTURE_NAME, [d.task_name for d in TRAIN_DATASETS], rate=PromptedExamplesRate(),
                            eval_tasks=eval_tasks, heldout_clusters=HELDOUT_CLUSTERS)


if MIXTURE_NAME not in seqio.MixtureRegistry.names():
  register()

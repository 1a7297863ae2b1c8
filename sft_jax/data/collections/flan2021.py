"""The FLAN 2021 collection (Wei et al., 2021) over TensorFlow Datasets, as seqio Tasks and Mixtures.

Importing this module registers, for every dataset in `DATASETS` (the 12 FLAN task clusters):
  `flan2021.<dataset>`          zero-shot, one template per example drawn from the dataset's
                                family (flan2021_templates.py); classification prompts list
                                their `OPTIONS:` and carry `answer_choices` for rank classification
  `flan2021.<dataset>.noopt`    the same prompts without the options block (classification only)
  `flan2021.<dataset>.fewshot`  each prompt preceded by `FEWSHOT_K` solved exemplars drawn from
                                the first `EXEMPLAR_POOL` training examples
the Mixture `flan2021` (examples-proportional, capped at 3,000 examples per dataset, as FLAN),
`flan2021_no_<cluster>` for each cluster (FLAN's leave-one-cluster-out protocol: the cluster's
tasks and all their variants are held out and evaluated), and `flan2021_variants` (zero-shot,
no-options and few-shot together, capped at 30,000: the FLAN part of a Flan 2022-style mix,
see `register_flan2022_mix` and gin_configs/mixtures/flan2022_mix.gin).

Inverted templates (the prompt built from the answer) are mixed into the zero-shot and
no-options train splits only: evaluation splits keep the forward templates, so every
classification example there has its answer among its `answer_choices`. Splits follow FLAN:
at most 30,000 training examples per dataset, 200 validation examples (held back from train
when the dataset has no spare split), and the dataset's labelled validation set as "test"
where its test labels are hidden.

Data: TFDS downloads each dataset on first read (`tfds.load` into ~/tensorflow_datasets).
Every FLAN 2021 dataset has a TFDS builder (Fix Punctuation is built from para_crawl/enda,
as FLAN built it), but TFDS cannot fetch five of them by itself: `MANUAL_DOWNLOAD` lists
story_cloze, newsroom, samsum, xsum and wmt16_csen with the files each needs. To use one
without TFDS, write it as prompt/completion JSONL (one rendered prompt per line, e.g. with
`flan2021_templates.FAMILIES[...]`) and register it as a file task in a run's gin file:

  import sft_jax.data.collections.files
  file_tasks.tasks = [{'name': 'flan2021_file.story_cloze', 'paths': 'data/story_cloze.jsonl',
                       'fmt': 'prompt_completion', 'metrics': ['accuracy'], 'validation_fraction': 0.05}]

(records `{"prompt": ..., "completion": ..., "answer_choices": [...]}`; see files.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from sft_jax.data import collections, mixtures, preprocessors
from sft_jax.data import templates as templates_lib
from sft_jax.data.collections import flan2021_datasets as datasets_lib
from sft_jax.data.collections import flan2021_templates as flan_templates
from sft_jax.evaluation import metrics

PREFIX = "flan2021."
NOOPT_SUFFIX = ".noopt"
FEWSHOT_SUFFIX = ".fewshot"
MIXTURE_NAME = "flan2021"
VARIANTS_MIXTURE_NAME = "flan2021_variants"
# FLAN 2021 mixes datasets in proportion to their size, capped at 3,000 examples.
CAP = 3000
# The cap Flan 2022 used for its FLAN sub-mixture.
VARIANTS_CAP = 30_000
FEWSHOT_K = datasets_lib.FEWSHOT_K
EXEMPLAR_POOL = 16
# Training examples read to fill the pool, so that skipped (unlabelled) records leave enough.
_EXEMPLAR_READ = 64
FEWSHOT_SEPARATOR = "\n\n"
FEWSHOT_JOINER = "\n"

CLUSTERS = datasets_lib.CLUSTERS
DATASETS = datasets_lib.DATASETS
MANUAL_DOWNLOAD = datasets_lib.MANUAL_DOWNLOAD

FLAN2022_MIX = "flan2022_mix"
# Flan 2022's sub-mixture rates (FLAN 4, T0 3, NIv2 1), here over this project's collections.
FLAN2022_WEIGHTS = {VARIANTS_MIXTURE_NAME: 4.0, "t0_train": 3.0, "superni_train": 1.0}

_METRICS = {"accuracy": metrics.accuracy, "exact_match": metrics.exact_match,
            # ROUGE-L (and normalized exact match), x100, with stemming: the summarization metric.
            "rouge": metrics.superni_metrics}


class _DropUncachedTfdsWarning(logging.Filter):
  """seqio warns per task that mixing rates count uncached input examples; these mixtures
  take their rates from the size table in flan2021_datasets.py instead."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "not cached so using number of input examples" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedTfdsWarning())


# ----- Names -----


def task_name(dataset: datasets_lib.FlanDataset | str, variant: str = "zeroshot") -> str:
  """The seqio name of a dataset's zero-shot, `noopt` or `fewshot` task."""
  name = dataset if isinstance(dataset, str) else dataset.name
  suffix = {"zeroshot": "", "noopt": NOOPT_SUFFIX, "fewshot": FEWSHOT_SUFFIX}[variant]
  return PREFIX + name + suffix


def variants(dataset: datasets_lib.FlanDataset) -> tuple[str, ...]:
  """The task variants registered for `dataset`."""
  family = flan_templates.FAMILIES[dataset.family]
  names = ["zeroshot"]
  if family.uses_options:
    names.append("noopt")
  if dataset.exemplars_from is not None:
    names.append("fewshot")
  return tuple(names)


def leave_out_mixture_name(cluster: str) -> str:
  """The leave-one-cluster-out mixture that holds out `cluster`."""
  return f"{MIXTURE_NAME}_no_{cluster}"


# ----- Rendering -----


def _to_python(value: Any) -> Any:
  """A value numpy_function hands over (bytes, numpy scalars and arrays) as Python str/int/list."""
  if isinstance(value, np.ndarray):
    return _to_python(value.item()) if value.ndim == 0 else [_to_python(v) for v in value.tolist()]
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.generic):
    return value.item()
  return value


def _lookup(example: Mapping[str, Any], path: str) -> Any:
  for part in path.split("/"):
    example = example[part]
  return example


def canonical(dataset: datasets_lib.FlanDataset, record: Mapping[str, Any]) -> dict[str, Any] | None:
  """The canonical example of a TFDS record (nested, or flat by feature path), None when skipped."""
  return dataset.convert({path: _to_python(record[path] if path in record else _lookup(record, path))
                          for path in dataset.fields})


def pick_template(dataset_name: str, example: Mapping[str, Any], choices: Sequence[Any]) -> Any:
  """The template of `example`: drawn by a SHA-256 of its content, so the same on every run."""
  # Template lists of one length draw the same index: an evaluation example's no-options and
  # few-shot prompts use the phrasing of its zero-shot prompt.
  key = json.dumps(example, sort_keys=True, default=str)
  return templates_lib.stable_rng("flan2021", dataset_name, key).choice(list(choices))


def render(dataset: datasets_lib.FlanDataset, record: Mapping[str, Any],
           chosen: Sequence[Any]) -> dict[str, Any] | None:
  """The rendered example of one TFDS record, or None when it is skipped."""
  example = canonical(dataset, record)
  if example is None:
    return None
  template = pick_template(dataset.name, example, chosen)
  inputs, targets = template.apply(example)
  if not inputs.strip() or not targets.strip():
    return None  # a record with an empty text field (a few exist in the summarization sets)
  return {"inputs": inputs, "targets": targets, "answer_choices": template.answer_choices(example) or [],
          "template": template.name}


class FlanTfdsSource(seqio.TfdsDataSource):
  """A TFDS dataset rendered with FLAN templates: `inputs`, `targets`, `answer_choices`, `template`."""

  def __init__(self, dataset: datasets_lib.FlanDataset, variant: str):
    super().__init__(tfds_name=dataset.tfds_name, splits=dict(dataset.splits))
    self.dataset, self.variant = dataset, variant
    self._exemplars: list[dict[str, Any]] | None = None

  def templates(self, split: str) -> list[Any]:
    """The templates examples of `split` are drawn from (inverted ones for zero-shot training only)."""
    family = flan_templates.FAMILIES[self.dataset.family]
    forward = list(family.forward)
    if self.variant == "noopt":
      forward = [t.without_options() for t in forward]
    if self.variant == "fewshot":
      # Forward templates only: many inverted prompts are the same for every example with the same
      # answer ("Write a positive tweet."), so exemplars would repeat the question they precede.
      pool = self.exemplars()
      return [templates_lib.FewShotTemplate(t, pool, self.dataset.fewshot_k, exemplar_separator=FEWSHOT_SEPARATOR,
                                            joiner=FEWSHOT_JOINER) for t in forward]
    return forward + (list(family.inverted) if split == "train" else [])

  def exemplars(self) -> list[dict[str, Any]]:
    """The few-shot pool: the first `EXEMPLAR_POOL` usable training examples, as canonical examples."""
    if self._exemplars is None:
      head = f"{self.dataset.exemplars_from}[:{_EXEMPLAR_READ}]"
      source = seqio.TfdsDataSource(tfds_name=self.dataset.tfds_name, splits={"exemplars": head})
      pool = []
      for record in source.get_dataset("exemplars", shuffle=False).as_numpy_iterator():
        example = canonical(self.dataset, record)
        if example is not None:
          pool.append(example)
        if len(pool) == EXEMPLAR_POOL:
          break
      self._exemplars = pool
    return self._exemplars

  def get_dataset(self, split: str | None = None, shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    """The TFDS split, converted and rendered; records without a usable label are skipped."""
    split = split or "train"
    raw = super().get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info, **kwargs)
    chosen = self.templates(split)
    paths = self.dataset.fields

    def render_py(*values):
      try:
        rendered = render(self.dataset, dict(zip(paths, values)), chosen)
      except Exception as e:  # numpy_function would report it without the task's name
        raise ValueError(f"{task_name(self.dataset, self.variant)} ({split}): {e}") from e
      if rendered is None:
        return b"", b"", np.zeros([0], object), b"", False
      choices = np.array([c.encode("utf-8") for c in rendered["answer_choices"]], dtype=object).reshape([-1])
      return (rendered["inputs"].encode("utf-8"), rendered["targets"].encode("utf-8"), choices,
              rendered["template"].encode("utf-8"), True)

    def render_tf(example):
      values = [_lookup(example, path) for path in paths]
      inputs, targets, choices, template, keep = tf.numpy_function(
          render_py, values, [tf.string, tf.string, tf.string, tf.string, tf.bool], stateful=False)
      for scalar in (inputs, targets, template, keep):
        scalar.set_shape([])
      choices.set_shape([None])
      return {"inputs": inputs, "targets": targets, "answer_choices": choices, "template": template,
              "keep": keep}

    rendered = raw.map(render_tf, num_parallel_calls=tf.data.AUTOTUNE)
    rendered = rendered.filter(lambda ex: ex["keep"])
    return rendered.map(lambda ex: {k: v for k, v in ex.items() if k != "keep"})


# ----- Registration -----


def _register_task(dataset: datasets_lib.FlanDataset, variant: str) -> None:
  name = task_name(dataset, variant)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=FlanTfdsSource(dataset, variant),
      output_features=preprocessors.text_to_text_features(),
      # Rendering happens in the source and is deterministic, so it can be cached offline.
      preprocessors=[seqio.CacheDatasetPlaceholder(), *preprocessors.TOKENIZE_AND_APPEND_EOS],
      metric_fns=[_METRICS[dataset.metric]],
  )


def eval_tasks() -> list[mixtures.EvalTask]:
  """Every dataset's zero-shot task as a seen evaluation task of its cluster."""
  return [mixtures.EvalTask(task_name(d), d.cluster, False, d.kind) for d in DATASETS]


def _register_mixtures() -> None:
  trainable = [d for d in DATASETS if d.trainable]
  evaluated = eval_tasks()
  sizes = {task_name(d): d.train_examples for d in trainable}
  mixtures.register_mixture(MIXTURE_NAME, list(sizes), num_examples=sizes, cap=CAP, eval_tasks=evaluated)
  for cluster in CLUSTERS:
    kept = {n: s for n, s in sizes.items() if n not in _cluster_task_names(cluster)}
    mixtures.register_mixture(leave_out_mixture_name(cluster), list(kept), num_examples=kept, cap=CAP,
                              eval_tasks=evaluated, heldout_clusters=[cluster],
                              heldout_tasks=sorted(_cluster_task_names(cluster)))
  # Each dataset's variants share its count, so adding variants does not reweight datasets.
  all_sizes, weights = {}, {}
  for d in trainable:
    for v in variants(d):
      all_sizes[task_name(d, v)] = d.train_examples
      weights[task_name(d, v)] = 1.0 / len(variants(d))
  mixtures.register_mixture(VARIANTS_MIXTURE_NAME, list(all_sizes), num_examples=all_sizes, cap=VARIANTS_CAP,
                            weights=weights, eval_tasks=evaluated)


def _cluster_task_names(cluster: str) -> set[str]:
  return {task_name(d, v) for d in DATASETS if d.cluster == cluster for v in variants(d)}


def register() -> None:
  """Registers every FLAN 2021 task and mixture (see the module docstring)."""
  for dataset in DATASETS:
    for variant in variants(dataset):
      _register_task(dataset, variant)
  _register_mixtures()


# ----- Flan 2022-style mix -----


def _vocabularies(collection: str) -> list[seqio.Vocabulary]:
  """The distinct target vocabularies of a collection's tasks (vocabularies compare by content)."""
  provider = seqio.get_mixture_or_task(collection)
  found = []
  for task in provider.tasks if isinstance(provider, seqio.Mixture) else [provider]:
    vocabulary = task.output_features["targets"].vocabulary
    if vocabulary not in found:
      found.append(vocabulary)
  return found


def register_flan2022_mix(weights: Mapping[str, float] = FLAN2022_WEIGHTS, name: str = FLAN2022_MIX
                          ) -> seqio.Mixture:
  """Registers `name`: the collection mixtures of `weights` mixed in proportion to their weights.

  As in Flan 2022, each collection keeps its own examples-proportional rates inside, and the
  collections' shares are set by hand. The collections must be registered (import their
  modules) and tokenize with one vocabulary: the synthetic collection brings its own.
  """
  missing = [c for c in weights if c not in seqio.MixtureRegistry.names() and c not in seqio.TaskRegistry.names()]
  if missing:
    where = {c: collections.registering_module(c) or "?" for c in missing}
    raise ValueError(f"{name}: collections not registered: {where}; add their modules to MIXTURE_MODULES "
                     "(one that registers at gin.finalize, like Super-NI, imported before this one)")
  vocabularies = {c: _vocabularies(c) for c in weights}
  distinct = []
  for vocabulary in (v for found in vocabularies.values() for v in found):
    if vocabulary not in distinct:
      distinct.append(vocabulary)
  if len(distinct) > 1:
    raise ValueError(f"{name}: the collections tokenize with different vocabularies ({vocabularies}); "
                     "mix only collections that share the model's vocabulary")
  return mixtures.register_mixture(name, list(weights), num_examples={c: 1 for c in weights},
                                   weights=dict(weights))


def _register_gin_flan2022_mix(config: Any) -> None:
  """Finalize hook: registers the Flan 2022-style mix when a gin file sets FLAN2022_WEIGHTS.

  gin runs finalize hooks in the order their modules were imported, so a collection that
  registers at finalize (Super-NI) must be imported first (flan2022_mix.gin includes its gin).
  """
  del config
  try:
    weights = gin.query_parameter("%FLAN2022_WEIGHTS")
  except ValueError:
    return  # the run does not ask for the mix
  register_flan2022_mix(dict(weights))


gin.config.register_finalize_hook(_register_gin_flan2022_mix)

if MIXTURE_NAME not in seqio.MixtureRegistry.names():
  register()

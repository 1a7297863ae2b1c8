"""Registers the embedded synthetic instruction tasks as seqio Tasks and a Mixture.

Importing this module registers, for every task in `synthetic_tasks.TASKS`:
  `synthetic.<task>`                   its training templates (train/validation/test)
  `synthetic.<task>.heldout_templates` its held-out phrasings (test only; seen tasks only)
the Mixture `synthetic_instructions` over the seen tasks, and that mixture's
held-out split: whole held-out clusters, held-out tasks inside seen clusters,
held-out phrasings of seen tasks (all held out) and new instances of the seen
tasks (seen). No download: every example is generated from a seed.

It also registers `synthetic_smoke`, a seven-task slice of that mixture and its split
(four seen tasks, one held-out phrasing, two held-out tasks): the same code paths with a
fraction of the start-up time, for checking a new install or host and for end-to-end tests.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Iterator, Sequence

import numpy as np
import seqio
import tensorflow as tf

from sft_jax.data import mixtures, preprocessors
from sft_jax.data.collections import synthetic_tasks, synthetic_vocab
from sft_jax.data.templates import Template
from sft_jax.evaluation import metrics

MIXTURE_NAME = "synthetic_instructions"
TASK_PREFIX = "synthetic."
HELDOUT_TEMPLATES_SUFFIX = ".heldout_templates"
# Evaluation sets are fixed, whatever seed the training run uses.
EVAL_SEED = 0
# Finite evaluation splits; training streams are unlimited.
EVAL_EXAMPLES = {"validation": 200, "test": 200}

SMOKE_MIXTURE_NAME = "synthetic_smoke"
# Generation and classification among both the seen and the held-out tasks.
_SMOKE_SEEN = ("reverse_list", "add_numbers", "even_or_odd", "comma_to_space")
_SMOKE_HELDOUT = ("first_and_last", "pick_largest_number")



class _DropUncachedFunctionWarning(logging.Filter):
  """seqio warns that uncached function sources reshuffle badly on restart; these
  streams are seeded and the trainer replays them exactly on resume, so it does not apply."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedFunctionWarning())

# Examples cross from Python into tf.data in chunks: `from_generator` costs about half a
# millisecond per element it yields, forty times what rendering an example costs.
CHUNK_SIZE = 256
_CHUNK_SIGNATURE = {
    "inputs": tf.TensorSpec([None], tf.string),
    "targets": tf.TensorSpec([None], tf.string),
    "answer_choices": tf.TensorSpec([None, None], tf.string),  # padded with ""
    "num_choices": tf.TensorSpec([None], tf.int32),
    "template": tf.TensorSpec([None], tf.string),
}


def render_examples(task: synthetic_tasks.SyntheticTask, templates: Sequence[Template], split: str,
                    seed: int) -> Iterator[dict]:
  """Yields rendered examples of `task`, each with a template drawn from `templates`."""
  template_rng = random.Random(f"{seed}/{task.name}/{split}/templates")
  for instance in synthetic_tasks.instances(task, split, seed):
    template = template_rng.choice(templates)
    yield {
        "inputs": template.render(instance, definition=task.definition),
        "targets": instance["target"],
        "answer_choices": list(instance.get("answer_choices") or []),
        "template": template.name,
    }


def _chunks(examples: Iterator[dict], size: int = CHUNK_SIZE) -> Iterator[dict]:
  """Groups examples into column arrays of up to `size` rows, choices padded with ""."""
  while chunk := list(itertools.islice(examples, size)):
    width = max(len(e["answer_choices"]) for e in chunk)
    yield {
        "inputs": np.array([e["inputs"] for e in chunk], dtype=object),
        "targets": np.array([e["targets"] for e in chunk], dtype=object),
        "answer_choices": np.array([e["answer_choices"] + [""] * (width - len(e["answer_choices"]))
                                    for e in chunk], dtype=object).reshape(len(chunk), width),
        "num_choices": np.array([len(e["answer_choices"]) for e in chunk], dtype=np.int32),
        "template": np.array([e["template"] for e in chunk], dtype=object),
    }


def _unpad_choices(example: dict) -> dict:
  example = dict(example)
  example["answer_choices"] = example["answer_choices"][:example.pop("num_choices")]
  return example


def _dataset_fn(task: synthetic_tasks.SyntheticTask, templates: Sequence[Template]):
  """A seqio dataset_fn: unlimited stream for train, a fixed finite set for eval splits."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files  # the stream is generated in a seeded order; seqio shuffles further
    if split == "train":
      generator = lambda: _chunks(render_examples(task, templates, split, 0 if seed is None else int(seed)))
    else:
      count = EVAL_EXAMPLES[split]
      generator = lambda: _chunks(itertools.islice(render_examples(task, templates, split, EVAL_SEED), count))
    chunks = tf.data.Dataset.from_generator(generator, output_signature=_CHUNK_SIGNATURE)
    return chunks.unbatch().map(_unpad_choices, num_parallel_calls=None, deterministic=True)

  return dataset_fn


class SeededStreamSource(seqio.FunctionDataSource):
  """A function source whose examples are already drawn in a seeded random order.

  Every instance is sampled independently from the split's seeded generator, so a shuffle
  buffer would only reorder independent draws. Declaring the shuffling internal lets a Task
  with `shuffle_buffer_size=None` skip it. seqio's default buffer holds 1,000 examples per
  task, which a 42-task mixture generates and tokenizes before its first example; without it
  the quickstart's input reaches its first batch about 3 s sooner and spends about 13% less CPU
  per batch after that, CPU the train step shares (`benchmarks/input_pipeline.py`).
  """

  @property
  def performs_internal_shuffling(self) -> bool:
    return True


def task_name(task: synthetic_tasks.SyntheticTask, heldout_templates: bool = False) -> str:
  """The seqio name of a synthetic task (or of its held-out phrasings)."""
  return TASK_PREFIX + task.name + (HELDOUT_TEMPLATES_SUFFIX if heldout_templates else "")


def _register_task(name: str, task: synthetic_tasks.SyntheticTask, templates: Sequence[Template],
                   splits: Sequence[str]) -> None:
  metric_fn = metrics.accuracy if task.is_classification else metrics.exact_match
  seqio.TaskRegistry.add(
      name,
      source=SeededStreamSource(_dataset_fn(task, templates), splits=splits),
      output_features=preprocessors.text_to_text_features(synthetic_vocab.vocabulary()),
      preprocessors=list(preprocessors.TOKENIZE_AND_APPEND_EOS),
      metric_fns=[metric_fn],
      shuffle_buffer_size=None,
  )


def _kind(task: synthetic_tasks.SyntheticTask) -> str:
  return "classification" if task.is_classification else "generation"


def register() -> None:
  """Registers every synthetic task, the training mixture and its held-out split."""
  eval_tasks = []
  for task in synthetic_tasks.TASKS:
    _register_task(task_name(task), task, task.templates, ("train", "validation", "test"))
    eval_tasks.append(mixtures.EvalTask(task_name(task), task.cluster, task.heldout, _kind(task)))
    if not task.heldout:
      name = task_name(task, heldout_templates=True)
      _register_task(name, task, task.heldout_templates, ("validation", "test"))
      eval_tasks.append(mixtures.EvalTask(name, task.cluster, True, _kind(task)))
  seen = [task_name(t) for t in synthetic_tasks.TASKS if not t.heldout]
  seqio.MixtureRegistry.add(MIXTURE_NAME, mixtures.uniform_rates(seen))
  mixtures.declare_heldout_split(mixtures.HeldoutSplit(MIXTURE_NAME, tuple(eval_tasks)))

  by_name = {t.name: t for t in synthetic_tasks.TASKS}
  smoke_seen = [task_name(by_name[name]) for name in _SMOKE_SEEN]
  smoke_eval = {*smoke_seen, task_name(by_name[_SMOKE_SEEN[0]], heldout_templates=True),
                *(task_name(by_name[name]) for name in _SMOKE_HELDOUT)}
  seqio.MixtureRegistry.add(SMOKE_MIXTURE_NAME, mixtures.uniform_rates(smoke_seen))
  mixtures.declare_heldout_split(
      mixtures.HeldoutSplit(SMOKE_MIXTURE_NAME, tuple(t for t in eval_tasks if t.task_name in smoke_eval)))


if MIXTURE_NAME not in seqio.MixtureRegistry.names():
  register()

"""Preference pairs over the synthetic instruction tasks: chosen = the right answer, rejected = a plausible wrong one.

Importing this module registers, for every seen (training) task of `synthetic_instructions`,
the preference task `synthetic_preferences.<task>` (train/validation/test, the task's training
templates) and the Mixture `synthetic_preferences` over them, so the CPU quickstart can run
SFT -> DPO -> held-out evaluation on the same generator. Held-out tasks and phrasings get no
pairs: DPO trains on what SFT saw, and the evaluation measures what transfers.

The rejected answer is wrong in the way a half-trained model is wrong, so that preferring the
chosen one takes reading the prompt: a class label is another of the task's answer choices;
a list loses or swaps items; spelled-out letters or digits swap places; a number is off by
one or two; anything else (a single word) is the answer of another instance of the task.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator, Sequence

import numpy as np
import seqio
import tensorflow as tf

from sft_jax.data import mixtures, preference, preprocessors
from sft_jax.data.collections import synthetic, synthetic_tasks, synthetic_vocab
from sft_jax.data.templates import Template

MIXTURE_NAME = "synthetic_preferences"
TASK_PREFIX = "synthetic_preferences."
_CHUNK = 256
_SIGNATURE = {name: tf.TensorSpec([None], tf.string) for name in (*preference.TEXT_FEATURES, "template")}


def _perturbed(target: str, rng: random.Random) -> str | None:
  """A near miss of `target` in its own format, or None when it has no structure to perturb."""
  if target.isdigit():
    return str(max(0, int(target) + rng.choice((-2, -1, 1, 2))))
  separator = ", " if ", " in target else " " if " " in target else None
  if separator is None:
    return None
  items = target.split(separator)
  if len(items) > 2 and rng.random() < 0.5:
    del items[rng.randrange(len(items))]
  else:
    i = rng.randrange(len(items) - 1)
    items[i], items[i + 1] = items[i + 1], items[i]
  return separator.join(items)


def wrong_answer(instance: dict, rng: random.Random, other_target: str) -> str | None:
  """A plausible wrong answer to `instance` (see the module docstring), or None if none differs."""
  target = instance["target"]
  choices = [c for c in instance.get("answer_choices") or () if c != target]
  if instance.get("answer_choices"):
    return rng.choice(choices) if choices else None
  for candidate in (_perturbed(target, rng), other_target):
    if candidate is not None and candidate != target:
      return candidate
  return None


def render_pairs(task: synthetic_tasks.SyntheticTask, templates: Sequence[Template], split: str,
                 seed: int) -> Iterator[dict]:
  """Yields {"inputs", "chosen", "rejected", "template"} for `task`, deterministic given `seed`."""
  rng = random.Random(f"{seed}/{task.name}/{split}/preferences")
  others = synthetic_tasks.instances(task, split, seed + 1)
  for instance, other in zip(synthetic_tasks.instances(task, split, seed), others):
    rejected = wrong_answer(instance, rng, other["target"])
    if rejected is None:
      continue
    template = rng.choice(templates)
    yield {"inputs": template.render(instance, definition=task.definition), "chosen": instance["target"],
           "rejected": rejected, "template": template.name}


def _dataset_fn(task: synthetic_tasks.SyntheticTask):
  """A seqio dataset_fn: an unlimited stream for train, the fixed evaluation sets of `synthetic` otherwise."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files
    if split == "train":
      stream = lambda: render_pairs(task, task.templates, split, 0 if seed is None else int(seed))
    else:
      stream = lambda: itertools.islice(render_pairs(task, task.templates, split, synthetic.EVAL_SEED),
                                        synthetic.EVAL_EXAMPLES[split])

    def chunks():  # whole columns cross into TF at once: per-example crossings cost more than the work
      examples = stream()
      while chunk := list(itertools.islice(examples, _CHUNK)):
        yield {name: np.array([e[name] for e in chunk], dtype=object) for name in _SIGNATURE}

    return tf.data.Dataset.from_generator(chunks, output_signature=_SIGNATURE).unbatch()

  return dataset_fn


def task_name(task: synthetic_tasks.SyntheticTask) -> str:
  """The seqio name of a synthetic task's preference pairs."""
  return TASK_PREFIX + task.name


def register() -> None:
  """Registers a preference task per seen synthetic task and the uniform mixture over them."""
  names = []
  for task in synthetic_tasks.TASKS:
    if task.heldout:
      continue
    seqio.TaskRegistry.add(
        task_name(task),
        source=seqio.FunctionDataSource(_dataset_fn(task), splits=("train", "validation", "test")),
        output_features=preference.preference_features(synthetic_vocab.vocabulary()),
        preprocessors=list(preprocessors.TOKENIZE_AND_APPEND_EOS))
    names.append(task_name(task))
  seqio.MixtureRegistry.add(MIXTURE_NAME, mixtures.uniform_rates(names))


if MIXTURE_NAME not in seqio.MixtureRegistry.names():
  register()

"""Super-NaturalInstructions (Wang et al., 2022) from a local checkout of allenai/natural-instructions.

  superni.register_superni("/data/natural-instructions")

or, in gin (gin_configs/mixtures/superni.gin; tasks are registered at gin.finalize()):

  SUPERNI_DIR = '/data/natural-instructions'

registers, for every `tasks/taskNNN_*.json` of the checkout, the seqio Task
`superni.taskNNN_*`, and the Mixture `superni_train` over the tasks listed in
`splits/<split>/train_tasks.txt`, with the tasks of `test_tasks.txt` declared as its
held-out evaluation tasks (cluster: the task's first category) — the paper's protocol.

Each instance is encoded as Tk-Instruct's collator does: by default the task definition
and two positive examples (`templates.SuperNITemplate`). The splits of a task:
  test (and validation, as in Tk-Instruct): its first `max_test_instances` instances, the
    official evaluation set (100 label-balanced instances put first in every task file);
  train: `max_train_instances` instances drawn with a fixed seed, from outside the test
    split when the task has enough, so seen tasks are evaluated on new instances.
The training target is one reference, drawn per instance as the collator does (seeded
here); `references` keeps all of them, and the task's postprocessor hands them to
`metrics.superni_metrics` as the targets (the seqio convention for multi-reference tasks).

Task files are read at the first use of a task, not at registration; registration reads
only the split lists and the categories of the evaluation tasks.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Any, Sequence

import gin
import seqio
import tensorflow as tf

from sft_jax.data import formats, mixtures, preprocessors, templates, vocabularies
from sft_jax.evaluation import metrics

TASK_PREFIX = "superni."
MIXTURE_NAME = "superni_train"
TRAIN, VALIDATION, TEST = "train", "validation", "test"
_OUTPUT_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "references": tf.TensorSpec([None], tf.string),
    "id": tf.TensorSpec([], tf.string),
    "template": tf.TensorSpec([], tf.string),
}
# Every task file states its categories near its top, before the (long) instances.
_HEADER_BYTES = 1 << 16
_CATEGORIES = re.compile(rb'"Categories"\s*:\s*(\[[^\]]*\])')


class _DropUncachedFunctionWarning(logging.Filter):
  """seqio warns that uncached function sources reshuffle badly on restart; these tasks are
  read in a fixed order and the trainer replays its stream exactly on resume."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedFunctionWarning())


# ----- The checkout -----


def task_name(superni_task: str) -> str:
  """The seqio name of a Super-NI task (`task001_quoref_question_generation`)."""
  return TASK_PREFIX + superni_task


def read_split_file(path: str, task_files: dict[str, str]) -> list[str]:
  """The task names listed in a split file, one per line; unknown or repeated names raise `path:line`."""
  names, lines = [], {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      name = line.strip()
      if not name:
        continue
      if name not in task_files:
        raise ValueError(f"{path}:{number}: no task file {name}.json in the checkout's tasks/")
      if name in lines:
        raise ValueError(f"{path}:{number}: task {name} already listed at line {lines[name]}")
      lines[name] = number
      names.append(name)
  if not names:
    raise ValueError(f"{path}: lists no tasks")
  return names


def read_categories(path: str) -> list[str]:
  """A task file's `Categories`, read from its header when it is there, else from the whole file."""
  with open(path, "rb") as f:
    match = _CATEGORIES.search(f.read(_HEADER_BYTES))
  try:
    if match:
      categories = json.loads(match.group(1))
    else:
      with open(path, encoding="utf-8") as f:
        categories = json.load(f).get("Categories")
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: Categories: not valid JSON: {e}") from None
  if not isinstance(categories, list) or not categories or not all(isinstance(c, str) for c in categories):
    raise ValueError(f"{path}: Categories: expected a non-empty list of strings, got {categories!r}")
  return categories


# ----- The data source -----


class SuperNITaskSource(seqio.FunctionDataSource):
  """One Super-NI task file, read, split and rendered once, on first use."""

  def __init__(self, path: str, template: templates.SuperNITemplate, *, max_train_instances: int | None,
               max_test_instances: int | None, seed: int):
    self.path, self.task = path, os.path.basename(path).removesuffix(".json")
    self._template, self._seed = template, seed
    self._max_train, self._max_test = max_train_instances, max_test_instances
    self._examples: dict[str, list[dict]] | None = None
    super().__init__(self._dataset_fn, splits=(TRAIN, VALIDATION, TEST), caching_permitted=False)

  def num_input_examples(self, split: str) -> int:
    """The number of examples of `split` after the instance caps (reads the file on first use)."""
    return len(self.examples(split))

  def examples(self, split: str) -> list[dict]:
    """The rendered examples of `split`, in file order."""
    if split not in self.splits:
      raise ValueError(f"Super-NI task {self.task!r} has no split {split!r}; splits: {list(self.splits)}")
    if self._examples is None:
      self._examples = self._load()
    return self._examples[TEST if split == VALIDATION else split]

  def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # a fixed order; seqio shuffles examples
    # Read here, in Python, so that a bad instance raises its own error rather than a tf.data one.
    examples = self.examples(split)
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=_OUTPUT_SIGNATURE)

  def _load(self) -> dict[str, list[dict]]:
    instances = list(formats.read_examples(self.path, "superni"))
    num_test = len(instances) if self._max_test is None else min(self._max_test, len(instances))
    num_train = len(instances) if self._max_train is None else min(self._max_train, len(instances))
    # Training instances come from outside the test split while there are enough of them.
    rng = templates.stable_rng("superni-train", self._seed, self.task)
    outside = rng.sample(range(num_test, len(instances)), min(num_train, len(instances) - num_test))
    inside = rng.sample(range(num_test), num_train - len(outside))
    if inside:
      logging.warning("Super-NI task %s has %d instances: %d of its %d training instances are also in its "
                      "test split", self.task, len(instances), len(inside), num_train)
    train = sorted(outside + inside)
    return {TRAIN: [self._render(instances[i], i) for i in train],
            TEST: [self._render(instances[i], i) for i in range(num_test)]}

  def _render(self, instance: dict, index: int) -> dict[str, Any]:
    # The template draws one of the references as the training target, as the collator does.
    example = dict(instance, targets=instance["references"], task_name=self.task)
    try:
      inputs, target = self._template.apply(example)
    except (KeyError, ValueError, TypeError) as e:
      what = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) adds quotes
      raise ValueError(f"{self.path}: Instances[{index}] (id {instance['id']!r}): {what}") from e
    # The collator strips the label; metrics compare against the references as written.
    return {"inputs": inputs, "targets": target.strip(), "references": list(instance["references"]),
            "id": instance["id"], "template": self._template.name}


def references_postprocessor(output: Any, example: dict | None = None, is_target: bool = False) -> Any:
  """seqio postprocess_fn: a target becomes all of its instance's references; a prediction stays as is."""
  if is_target and example is not None and "references" in example:
    return [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in example["references"]]
  return output


# ----- Registration -----

_REGISTERED: dict[str, tuple] = {}


def _register_task(path: str, template: templates.SuperNITemplate, vocabulary: seqio.Vocabulary,
                   max_train_instances: int | None, max_test_instances: int | None, seed: int) -> str:
  name = task_name(os.path.basename(path).removesuffix(".json"))
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    raise ValueError(f"Super-NI task {name!r}: a task or mixture of that name is already registered")
  source = SuperNITaskSource(path, template, max_train_instances=max_train_instances,
                             max_test_instances=max_test_instances, seed=seed)
  seqio.TaskRegistry.add(name, source=source, output_features=preprocessors.text_to_text_features(vocabulary),
                         preprocessors=list(preprocessors.TOKENIZE_AND_APPEND_EOS),
                         postprocess_fn=references_postprocessor, metric_fns=[metrics.superni_metrics])
  return name


def _evenly_spaced(items: Sequence[str], count: int) -> list[str]:
  if count >= len(items):
    return list(items)
  return [items[(i * len(items)) // count] for i in range(count)]


@gin.configurable
def register_superni(superni_dir: str, *, split: str = "default", max_train_instances: int | None = 100,
                     max_test_instances: int | None = 100, num_pos_examples: int = 2, num_neg_examples: int = 0,
                     add_explanation: bool = False, add_task_definition: bool = True, add_task_name: bool = False,
                     num_seen_eval_tasks: int = 12, seed: int = 0, mixing_cap: int | None = None,
                     mixing_temperature: float = 1.0, vocabulary: seqio.Vocabulary | None = None) -> seqio.Mixture:
  """Registers every task of a Super-NI checkout and the `superni_train` mixture with its held-out split.

  The defaults are the paper's: definition + 2 positive examples, at most 100 instances per
  training task, 100 per evaluation task, examples-proportional mixing (no cap, T=1: Tk-Instruct
  concatenates the capped tasks). Besides the held-out test tasks, `num_seen_eval_tasks`
  training tasks (evenly spaced in the train list) are evaluated on their test split.
  """
  if (max_train_instances is not None and max_train_instances <= 0) or (
      max_test_instances is not None and max_test_instances <= 0):
    raise ValueError(f"register_superni: instance caps must be positive or None, got "
                     f"max_train_instances={max_train_instances}, max_test_instances={max_test_instances}")
  if num_seen_eval_tasks < 1:
    # The evaluator's report compares held-out tasks with seen ones; it needs both.
    raise ValueError(f"register_superni: num_seen_eval_tasks must be >= 1, got {num_seen_eval_tasks}")
  superni_dir = os.path.abspath(os.path.expanduser(superni_dir))
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  template = templates.SuperNITemplate(num_positive=num_pos_examples, num_negative=num_neg_examples,
                                       add_explanation=add_explanation, add_definition=add_task_definition,
                                       add_task_name=add_task_name)
  settings = (superni_dir, split, max_train_instances, max_test_instances, template, num_seen_eval_tasks, seed,
              mixing_cap, mixing_temperature, vocabulary)
  if MIXTURE_NAME in _REGISTERED and MIXTURE_NAME in seqio.MixtureRegistry.names():
    if _REGISTERED[MIXTURE_NAME] == settings:
      return seqio.get_mixture_or_task(MIXTURE_NAME)
    raise ValueError(f"Super-NI is already registered with other settings ({_REGISTERED[MIXTURE_NAME]}); "
                     "register it once per process")

  task_dir = os.path.join(superni_dir, "tasks")
  task_files = {os.path.basename(p).removesuffix(".json"): p
                for p in sorted(glob.glob(os.path.join(task_dir, "task*.json")))}
  if not task_files:
    raise FileNotFoundError(f"register_superni: no task*.json files in {task_dir} "
                            "(expected a checkout of allenai/natural-instructions)")
  split_dir = os.path.join(superni_dir, "splits", split)
  train_tasks = read_split_file(os.path.join(split_dir, "train_tasks.txt"), task_files)
  test_tasks = read_split_file(os.path.join(split_dir, "test_tasks.txt"), task_files)
  both = sorted(set(train_tasks) & set(test_tasks))
  if both:
    raise ValueError(f"{split_dir}: tasks listed in both train_tasks.txt and test_tasks.txt: {both}")

  def eval_task(name: str, heldout: bool) -> mixtures.EvalTask:
    return mixtures.EvalTask(task_name(name), read_categories(task_files[name])[0], heldout, "generation")

  # Read before anything is registered, so that a bad file leaves no half-registered checkout.
  heldout = [eval_task(name, True) for name in test_tasks]
  seen = [eval_task(name, False) for name in _evenly_spaced(train_tasks, num_seen_eval_tasks)]
  for path in task_files.values():
    _register_task(path, template, vocabulary, max_train_instances, max_test_instances, seed)
  mixture = mixtures.register_mixture(
      MIXTURE_NAME, [task_name(name) for name in train_tasks],
      rate=mixtures.rate_fn(mixing_cap, mixing_temperature), eval_tasks=heldout + seen,
      heldout_tasks=[t.task_name for t in heldout])
  _REGISTERED[MIXTURE_NAME] = settings
  return mixture


def _register_from_gin(config: Any) -> None:
  """Finalize hook: registers Super-NI when a gin file bound its directory (SUPERNI_DIR)."""
  del config
  try:
    gin.query_parameter("register_superni.superni_dir")
  except ValueError:
    return
  register_superni()  # gin supplies superni_dir


gin.config.register_finalize_hook(_register_from_gin)

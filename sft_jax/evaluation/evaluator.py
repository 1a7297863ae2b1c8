"""Held-out evaluation of a checkpoint (or of every kept checkpoint) against its step-0 baseline.

Generation tasks are decoded greedily (KV cache) and scored with the task's own
metric functions; classification tasks are scored by rank classification: every
answer choice is scored as a target (its tokens and EOS) and the most likely one is
the prediction. A choice's score is its summed log-likelihood, or with
`length_normalization` that sum divided by its number of target tokens, EOS included
(as `tools/score.py` writes them: `loglik / num_tokens`), which stops the sum from
favouring short choices. Tasks whose examples carry a `template` feature are also
scored per template. Examples of all tasks share fixed-shape batches, so each function
is compiled once per prompt-length bucket. Batches follow the model's `feature_layout`
as the trainer packs it: a decoder-only model reads its start token, the prompt and the
targets as one sequence, and decodes from the prompt alone.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np
import seqio
from flax import nnx

from sft_jax.data import mixtures, packing
from sft_jax.data.vocabularies import EOS_ID
from sft_jax.evaluation import curves, metrics
from sft_jax.evaluation import report as report_lib
from sft_jax.inference import batching, decoding
from sft_jax.train import checkpoints, partitioning
from sft_jax.train import state as state_lib


@dataclasses.dataclass
class EvalExample:
  """One evaluation instance: tokenized prompt, target string, optional choices and template."""

  task: str
  inputs: np.ndarray
  target: str
  answer_choices: tuple[str, ...]
  template: str | None = None  # the name of the template that rendered the prompt, if the task says
  inputs_text: str = ""  # the rendered prompt before tokenization
  # What the task's metrics receive as this example's target: the task's `postprocess_fn` applied
  # to it as seqio does (e.g. every reference of a Super-NI instance); `target` when it has none.
  metric_target: Any = None

  def __post_init__(self):
    if self.metric_target is None:
      self.metric_target = self.target


def load_examples(task_name: str, split: str, max_examples: int) -> list[EvalExample]:
  """The first `max_examples` examples of a task's split, in their fixed order."""
  task = seqio.get_mixture_or_task(task_name)
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                             trim_output_features=False)
  out = []
  for ex in dataset.take(max_examples).as_numpy_iterator():
    choices = tuple(c.decode() for c in ex.get("answer_choices", ()))
    template = ex["template"].decode() if "template" in ex else None
    if "inputs_pretokenized" in ex:
      inputs_text = ex["inputs_pretokenized"].decode()
    else:  # a task that keeps no text copy: the prompt as its own vocabulary reads it
      inputs_text = task.output_features["inputs"].vocabulary.decode(ex["inputs"].tolist())
    target = ex["targets_pretokenized"].decode()
    metric_target = task.postprocess_fn(target, example=ex, is_target=True) if task.postprocess_fn else target
    out.append(EvalExample(task_name, ex["inputs"], target, choices, template, inputs_text, metric_target))
  if not out:
    raise ValueError(f"task {task_name!r} has no examples in split {split!r}")
  return out


def pick_choice(logliks: np.ndarray, num_tokens: np.ndarray, length_normalization: bool = False) -> int:
  """Index of the best answer choice: highest summed log-likelihood, or per target token
  (EOS included) with `length_normalization`; the first one on a tie."""
  scores = np.asarray(logliks, np.float64)
  if length_normalization:
    scores = scores / np.asarray(num_tokens, np.float64)
  return int(np.argmax(scores))


class CheckpointScorer:
  """Jitted decoding and scoring for one set of parameters, with fixed batch shapes."""

  def __init__(self, model: Any, graphdef: Any, params: Any, mesh: jax.sharding.Mesh,
               batch_size: int, input_length: int, target_length: int,
               decode_config: decoding.DecodeConfig | None = None, decode_seed: int = 0):
    self._params, self._mesh = params, mesh
    self.decode_config, self.decode_seed = decode_config, decode_seed
    self.batch_size, self.input_length, self.target_length = batch_size, input_length, target_length
    self.layout = getattr(model, "feature_layout", "encoder_decoder")
    self.bos_id = packing.packer_bos_id(getattr(model, "bos_id", 0))  # decoder rows' start token
    # Where a generation ends: any of the model's end tokens (an imported Llama has several).
    eos = getattr(model, "eos_ids", None) or (getattr(model, "eos_id", EOS_ID),)
    self.eos_ids = np.asarray(eos, np.int32)
    self._predict = jax.jit(lambda p, b, key: model.predict_batch(nnx.merge(graphdef, p), b, target_length,
                                                                  decode_config, key))
    self._score = jax.jit(lambda p, b: model.score_batch(nnx.merge(graphdef, p), b))
    # Encoder-decoder rank classification encodes each prompt once for all its choices.
    self._score_choices = (jax.jit(lambda p, b: model.score_choices(nnx.merge(graphdef, p), b))
                           if self.layout == "encoder_decoder" and hasattr(model, "score_choices") else None)

  def with_params(self, params: Any) -> "CheckpointScorer":
    """This scorer for other parameters of the same model, reusing its compiled functions."""
    other = copy.copy(self)
    other._params = params
    return other

  def _run(self, fn: Callable, pairs: list[tuple[np.ndarray, np.ndarray]], prompt_only: bool = False) -> np.ndarray:
    """Applies `fn(params, batch)` to (inputs, targets) pairs in fixed-size, length-bucketed batches."""
    return batching.run_in_batches(
        functools.partial(fn, self._params), pairs, batch_size=self.batch_size,
        input_length=self.input_length, target_length=self.target_length,
        sharding=partitioning.batch_sharding(self._mesh), layout=self.layout, prompt_only=prompt_only,
        bos_id=self.bos_id if self.layout == "decoder_only" else None)

  def generate(self, examples: list[EvalExample], vocab: seqio.Vocabulary) -> list[str]:
    """Continuations of each example's prompt (greedy unless `decode_config` says otherwise), as
    strings (EOS and after dropped). Sampling draws batch k with `fold_in(key(decode_seed), k)`,
    so a rerun over the same examples gives the same text."""
    dummy = np.array([vocab.eos_id], np.int32)
    base_key, batch_index = jax.random.key(self.decode_seed), iter(range(len(examples) + 1))

    def predict(params, batch):
      return self._predict(params, batch, jax.random.fold_in(base_key, next(batch_index)))

    tokens = self._run(predict, [(ex.inputs, dummy) for ex in examples], prompt_only=True)
    texts = []
    for row in tokens:
      ends = np.flatnonzero(np.isin(row, self.eos_ids))
      row = row[:ends[0]] if len(ends) else row
      texts.append(vocab.decode(row[row > 0].tolist()))
    return texts

  def choice_logliks(self, examples: list[EvalExample],
                     vocab: seqio.Vocabulary) -> list[tuple[np.ndarray, np.ndarray]]:
    """(summed target log-likelihood [C], scored target tokens [C]) of each example's C choices."""
    choices = []
    for ex in examples:
      if not ex.answer_choices:
        raise ValueError(f"task {ex.task!r}: a classification example has no answer_choices")
      # Each choice ends as the task's targets do: with its vocabulary's EOS.
      choices.append([np.array(vocab.encode(c) + [vocab.eos_id], np.int32) for c in ex.answer_choices])
    # Rows keep at most target_length target tokens, so no more than that are scored.
    num_tokens = [np.minimum([len(c) for c in cs], self.target_length) for cs in choices]
    if self._score_choices is not None:
      batch_shards = self._mesh.shape["data"] * self._mesh.shape["fsdp"]
      loglik = batching.run_choices_in_batches(
          functools.partial(self._score_choices, self._params), [(ex.inputs, cs) for ex, cs in zip(examples, choices)],
          batch_size=self.batch_size, input_length=self.input_length, target_length=self.target_length,
          sharding=partitioning.batch_sharding(self._mesh),
          batch_multiple=max(1, batch_shards // jax.process_count()))
      return list(zip(loglik, num_tokens))
    flat = self._run(self._score, [(ex.inputs, c) for ex, cs in zip(examples, choices) for c in cs])
    bounds = np.cumsum([0] + [len(cs) for cs in choices])
    return [(flat[a:b], n) for a, b, n in zip(bounds[:-1], bounds[1:], num_tokens)]

  def rank_choices(self, examples: list[EvalExample], vocab: seqio.Vocabulary,
                   length_normalization: bool = False) -> list[str]:
    """The most likely answer choice per example (see `pick_choice`)."""
    return [ex.answer_choices[pick_choice(ll, n, length_normalization)]
            for ex, (ll, n) in zip(examples, self.choice_logliks(examples, vocab))]


@dataclasses.dataclass
class TaskResults:
  """One checkpoint's scores on the evaluation tasks and the predictions they came from."""

  tasks: dict[str, dict[str, float]]  # task -> metric -> value
  templates: dict[str, dict[str, dict[str, float]]]  # task -> template -> metric -> value
  predictions: dict[str, list[str]]  # task -> one prediction per example


def _run_metrics(task: seqio.Task, targets: list[str], predictions: list[str]) -> dict[str, float]:
  scores: dict[str, float] = {}
  for metric_fn in task.metric_fns:
    scores.update({k: float(v) for k, v in metric_fn(targets, predictions).items()})
  return scores


def _template_scores(task: seqio.Task, examples: list[EvalExample],
                     predictions: list[str]) -> dict[str, dict[str, float]]:
  """The task's metrics on each template's examples; empty when the examples name none."""
  named = [ex.template is not None for ex in examples]
  if not any(named):
    return {}
  if not all(named):
    # A partial split would silently leave examples out of every template's score.
    raise ValueError(f"task {task.name!r}: {named.count(False)} of {len(named)} examples have no template")
  groups: dict[str, tuple[list[str], list[str]]] = {}
  for ex, prediction in zip(examples, predictions):
    targets, preds = groups.setdefault(ex.template, ([], []))
    targets.append(ex.metric_target)
    preds.append(prediction)
  return {name: _run_metrics(task, *groups[name]) for name in sorted(groups)}


def score_tasks(scorer: CheckpointScorer, eval_tasks: Sequence[mixtures.EvalTask],
                examples: dict[str, list[EvalExample]], vocab: seqio.Vocabulary,
                length_normalization: bool = False) -> TaskResults:
  """Runs every task's metrics on the scorer's predictions, per task and per template;
  one batched pass per kind of task."""
  predict = {"generation": scorer.generate,
             "classification": functools.partial(scorer.rank_choices, length_normalization=length_normalization)}
  predictions: dict[str, list[str]] = {}
  for kind in ("generation", "classification"):
    names = [t.task_name for t in eval_tasks if t.kind == kind]
    flat = [ex for name in names for ex in examples[name]]
    if not flat:
      continue
    outputs = iter(predict[kind](flat, vocab))
    for name in names:
      predictions[name] = [next(outputs) for _ in examples[name]]
  results = TaskResults({}, {}, predictions)
  for t in eval_tasks:
    task = seqio.get_mixture_or_task(t.task_name)
    task_examples = examples[t.task_name]
    results.tasks[t.task_name] = _run_metrics(task, [ex.metric_target for ex in task_examples], predictions[t.task_name])
    by_template = _template_scores(task, task_examples, predictions[t.task_name])
    if by_template:
      results.templates[t.task_name] = by_template
  return results


def prediction_records(eval_tasks: Sequence[mixtures.EvalTask], examples: dict[str, list[EvalExample]],
                       predictions: dict[str, list[str]]) -> list[dict]:
  """The lines of predictions.jsonl (format in `report`'s docstring), tasks in declared order."""
  records = []
  for t in eval_tasks:
    for index, (ex, prediction) in enumerate(zip(examples[t.task_name], predictions[t.task_name])):
      record = {"task": t.task_name, "template": ex.template, "index": index, "inputs": ex.inputs_text,
                "targets": ex.target, "prediction": prediction}
      if t.kind == "classification":
        record["answer_choices"] = list(ex.answer_choices)
      records.append(record)
  return records


def load_eval_set(mixture_name: str, split: str, max_examples_per_task: int, input_length: int,
                  vocabulary: seqio.Vocabulary | None = None
                  ) -> tuple[mixtures.HeldoutSplit, dict[str, list[EvalExample]], seqio.Vocabulary]:
  """The mixture's declared evaluation tasks, their first examples and the targets' vocabulary."""
  split_decl = mixtures.get_heldout_split(mixture_name)
  examples = {t.task_name: load_examples(t.task_name, split, max_examples_per_task)
              for t in split_decl.eval_tasks}
  too_long = sum(len(ex.inputs) > input_length for exs in examples.values() for ex in exs)
  if too_long:
    logging.warning("%d evaluation prompts are longer than input_length=%d and are truncated",
                    too_long, input_length)
  vocab = vocabulary or seqio.get_mixture_or_task(split_decl.eval_tasks[0].task_name).output_features[
      "targets"].vocabulary
  return split_decl, examples, vocab


def _task_info(split_decl: mixtures.HeldoutSplit, examples: dict[str, list[EvalExample]]) -> dict[str, dict]:
  return {t.task_name: {"cluster": t.cluster, "heldout": t.heldout, "kind": t.kind,
                        "num_examples": len(examples[t.task_name])} for t in split_decl.eval_tasks}


def _steps_to_evaluate(checkpointer: checkpoints.Checkpointer, step: int | None, all_steps: bool) -> list[int]:
  if all_steps and step is not None:
    raise ValueError(f"evaluate_heldout: step={step} and all_steps=True; give one or the other")
  steps = checkpointer.all_steps() if all_steps else [checkpointer.latest_step() if step is None else step]
  if not steps or steps[0] is None:
    raise ValueError(f"no checkpoint in {checkpointer.directory}")
  return steps


def _write(report: dict, predictions: list[dict], out_dir: str) -> None:
  if jax.process_index() == 0:
    paths = report_lib.write_report(report, out_dir, predictions)
    logging.info("wrote %s", paths)


# Generation settings from gin: `evaluate_heldout.decode_config = @decoding.DecodeConfig()`, then
# e.g. `decoding.DecodeConfig.method = 'beam'`.
gin.external_configurable(decoding.DecodeConfig, module="decoding")


@gin.configurable
def evaluate_heldout(model_dir: str = gin.REQUIRED, mixture_name: str = gin.REQUIRED, model: Any = gin.REQUIRED,
                     vocabulary: seqio.Vocabulary | None = None, step: int | None = None, seed: int = 0,
                     split: str = "test", max_examples_per_task: int = 100, batch_size: int = 128,
                     input_length: int = 256, target_length: int = 64,
                     out_dir: str | None = None, length_normalization: bool = False,
                     all_steps: bool = False, decode_config: decoding.DecodeConfig | None = None,
                     decode_seed: int = 0) -> dict:
  """Scores a checkpoint of `model_dir` (latest unless `step`) and the step-0 model on the
  mixture's declared evaluation tasks; writes report.{json,md,png} and predictions.jsonl to
  `out_dir` (default `model_dir/eval`).

  With `all_steps`, every kept checkpoint is scored (the baseline once): each step's files go to
  `out_dir/step_<N>/`, the latest step's to `out_dir` too, and the means of every step (the
  baseline as step 0) to `out_dir/learning_curve.{json,png}`. Returns the latest step's report.
  """
  split_decl, examples, vocab = load_eval_set(mixture_name, split, max_examples_per_task, input_length,
                                              vocabulary)
  out_dir = out_dir or os.path.join(model_dir, "eval")
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  checkpointer = checkpoints.Checkpointer(model_dir)
  steps = _steps_to_evaluate(checkpointer, step, all_steps)
  task_info = _task_info(split_decl, examples)
  score = functools.partial(score_tasks, eval_tasks=split_decl.eval_tasks, examples=examples, vocab=vocab,
                            length_normalization=length_normalization)

  reports, latest_predictions = [], []
  with state_lib.mesh_context(mesh, rules):
    graphdef, params = state_lib.init_params(model, seed, mesh, rules)
    scorer = CheckpointScorer(model, graphdef, params, mesh, batch_size, input_length, target_length,
                              decode_config, decode_seed)
    baseline = score(scorer)
    logging.info("scored the baseline parameters on %d tasks", len(examples))
    for trained_step in steps:
      _, params = state_lib.restore_params(checkpointer, trained_step, model, seed, mesh, rules)
      # Every parameter set shares one model structure, so they share compiled functions.
      scorer = scorer.with_params(params)
      trained = score(scorer)
      logging.info("scored step %d on %d tasks", trained_step, len(examples))
      report = report_lib.build_report(trained_step, os.path.abspath(model_dir), trained.tasks, task_info, 0,
                                       baseline.tasks, trained.templates, baseline.templates)
      latest_predictions = prediction_records(split_decl.eval_tasks, examples, trained.predictions)
      if all_steps:
        _write(report, latest_predictions, os.path.join(out_dir, f"step_{trained_step}"))
      reports.append(report)

  report = _with_learning_curve(reports, model_dir, out_dir, split, all_steps)
  _write(report, latest_predictions, out_dir)
  return report


def _with_learning_curve(reports: list[dict], model_dir: str, out_dir: str, split: str,
                         all_steps: bool) -> dict:
  """The latest report with the run's learning curve: the evaluated steps (the baseline and
  every scored checkpoint) and the periodic evaluations the trainer logged, if any. Writes
  learning_curve.png (with `all_steps`) and learning_curve_logged.png next to the report."""
  evaluated = curves.curve_from_reports(reports)
  scalars = curves.read_run_scalars(model_dir)
  logged = curves.logged_curve(scalars)
  png = None
  if jax.process_index() == 0:
    if logged:
      logging.info("wrote %s", curves.write_logged_curve(logged, model_dir, out_dir))
      png = f"{curves.LOGGED_CURVE_FILE}.png"
    if all_steps:
      paths = curves.write_learning_curve(evaluated, out_dir, title=f"{os.path.abspath(model_dir)}: {split} split")
      logging.info("wrote %s", paths)
      png = f"{curves.CURVE_FILE}.png"
  report = dict(reports[-1], learning_curve=curves.report_rows(evaluated, logged, scalars.get("loss")))
  return dict(report, learning_curve_png=png) if png else report


@gin.configurable
class PeriodicEvaluator:
  """Scores the training state on a mixture's evaluation tasks every `every` steps.

  The trainer calls it with its live parameters (no checkpoint round trip) and logs the
  returned scalars to TensorBoard; with `best_metric` (one of those scalars) it also keeps the
  best checkpoint by that value. Examples are read and functions compiled on the first call.
  """

  def __init__(self, mixture_name: str = gin.REQUIRED, every: int = 500, split: str = "test",
               max_examples_per_task: int = 20, batch_size: int = 128, input_length: int = 256,
               target_length: int = 64, best_metric: str | None = "eval/heldout_mean",
               best_mode: str = "max", vocabulary: seqio.Vocabulary | None = None,
               length_normalization: bool = False, decode_config: decoding.DecodeConfig | None = None,
               decode_seed: int = 0):
    if every < 1:
      raise ValueError(f"PeriodicEvaluator.every={every}; expected a positive number of steps")
    self.mixture_name, self.every, self.split = mixture_name, every, split
    self.max_examples_per_task, self.vocabulary = max_examples_per_task, vocabulary
    self.batch_size, self.input_length, self.target_length = batch_size, input_length, target_length
    self.best_metric, self.best_mode = best_metric, best_mode
    self.length_normalization = length_normalization
    self.decode_config, self.decode_seed = decode_config, decode_seed
    self._loaded = None
    self._scorer = None

  def due(self, step: int, last_step: int) -> bool:
    """Whether the trainer evaluates after `step` (every `every` steps and at the end)."""
    return step % self.every == 0 or step == last_step

  def __call__(self, model: Any, graphdef: Any, params: Any, mesh: jax.sharding.Mesh) -> dict[str, float]:
    """Scalars "eval/{seen,heldout}_mean", "eval/{seen,heldout}_cluster/<name>", "eval/task/<name>"."""
    if self._loaded is None:
      self._loaded = load_eval_set(self.mixture_name, self.split, self.max_examples_per_task,
                                   self.input_length, self.vocabulary)
    split_decl, examples, vocab = self._loaded
    self._scorer = (self._scorer.with_params(params) if self._scorer else CheckpointScorer(
        model, graphdef, params, mesh, self.batch_size, self.input_length, self.target_length,
        self.decode_config, self.decode_seed))
    scores = score_tasks(self._scorer, split_decl.eval_tasks, examples, vocab,
                         length_normalization=self.length_normalization).tasks
    summary = report_lib.summarize(scores, _task_info(split_decl, examples))
    scalars = {"eval/seen_mean": summary["seen_mean"], "eval/heldout_mean": summary["heldout_mean"]}
    for side, key in (("heldout", "clusters"), ("seen", "seen_clusters")):
      scalars.update({f"eval/{side}_cluster/{name}": value for name, value in summary[key].items()})
    scalars.update({f"eval/task/{name}": metrics.primary_metric(task_scores)
                    for name, task_scores in scores.items()})
    if self.best_metric and self.best_metric not in scalars:
      raise ValueError(f"PeriodicEvaluator.best_metric={self.best_metric!r} is not one of its scalars "
                       f"(e.g. 'eval/heldout_mean', 'eval/seen_mean', 'eval/heldout_cluster/<name>')")
    return scalars


def summary_line(report: dict) -> str:
  """One line with both means against the baseline, for the console."""
  b = report["baseline"]
  return (f"step {report['step']}: seen_mean {report['seen_mean']:.3f} (step {b['step']}: {b['seen_mean']:.3f}), "
          f"heldout_mean {report['heldout_mean']:.3f} (step {b['step']}: {b['heldout_mean']:.3f})")

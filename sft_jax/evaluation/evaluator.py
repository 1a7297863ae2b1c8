"""Held-out evaluation of a checkpoint against its step-0 baseline.

Generation tasks are decoded greedily (KV cache) and scored with the task's own
metric functions; classification tasks are scored by rank classification: every
answer choice is scored as a target and the most likely one is the prediction.
Examples of all tasks share fixed-shape batches, so each function is compiled
once per prompt-length bucket. Batches follow the model's `feature_layout` as the
trainer packs it: a decoder-only model reads its start token, the prompt and the
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
from sft_jax.evaluation import metrics
from sft_jax.evaluation import report as report_lib
from sft_jax.inference import batching
from sft_jax.train import checkpoints, partitioning
from sft_jax.train import state as state_lib


@dataclasses.dataclass
class EvalExample:
  """One evaluation instance: tokenized prompt, target strings and optional choices."""

  task: str
  inputs: np.ndarray
  target: str
  answer_choices: tuple[str, ...]


def load_examples(task_name: str, split: str, max_examples: int) -> list[EvalExample]:
  """The first `max_examples` examples of a task's split, in their fixed order."""
  task = seqio.get_mixture_or_task(task_name)
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                             trim_output_features=False)
  out = []
  for ex in dataset.take(max_examples).as_numpy_iterator():
    choices = tuple(c.decode() for c in ex.get("answer_choices", ()))
    out.append(EvalExample(task_name, ex["inputs"], ex["targets_pretokenized"].decode(), choices))
  if not out:
    raise ValueError(f"task {task_name!r} has no examples in split {split!r}")
  return out


class CheckpointScorer:
  """Jitted decoding and scoring for one set of parameters, with fixed batch shapes."""

  def __init__(self, model: Any, graphdef: Any, params: Any, mesh: jax.sharding.Mesh,
               batch_size: int, input_length: int, target_length: int):
    self._params, self._mesh = params, mesh
    self.batch_size, self.input_length, self.target_length = batch_size, input_length, target_length
    self.layout = getattr(model, "feature_layout", "encoder_decoder")
    self.bos_id = packing.packer_bos_id(getattr(model, "bos_id", 0))  # decoder rows' start token
    # Where a generation ends: any of the model's end tokens (an imported Llama has several).
    eos = getattr(model, "eos_ids", None) or (getattr(model, "eos_id", EOS_ID),)
    self.eos_ids = np.asarray(eos, np.int32)
    self._predict = jax.jit(lambda p, b: model.predict_batch(nnx.merge(graphdef, p), b, target_length))
    self._score = jax.jit(lambda p, b: model.score_batch(nnx.merge(graphdef, p), b))

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
    """Greedy continuations of each example's prompt, as strings (EOS and after dropped)."""
    dummy = np.array([vocab.eos_id], np.int32)
    tokens = self._run(self._predict, [(ex.inputs, dummy) for ex in examples], prompt_only=True)
    texts = []
    for row in tokens:
      ends = np.flatnonzero(np.isin(row, self.eos_ids))
      row = row[:ends[0]] if len(ends) else row
      texts.append(vocab.decode(row[row > 0].tolist()))
    return texts

  def rank_choices(self, examples: list[EvalExample], vocab: seqio.Vocabulary) -> list[str]:
    """The answer choice with the highest target log-likelihood, per example."""
    pairs, owners = [], []
    for k, ex in enumerate(examples):
      for choice in ex.answer_choices:
        # Each choice ends as the task's targets do: with its vocabulary's EOS.
        pairs.append((ex.inputs, np.array(vocab.encode(choice) + [vocab.eos_id], np.int32)))
        owners.append(k)
    loglik = self._run(self._score, pairs)
    best: dict[int, tuple[float, str]] = {}
    flat_choices = [c for ex in examples for c in ex.answer_choices]
    for k, ll, choice in zip(owners, loglik, flat_choices):
      if k not in best or ll > best[k][0]:
        best[k] = (float(ll), choice)
    return [best[k][1] for k in range(len(examples))]


def score_tasks(scorer: CheckpointScorer, eval_tasks: Sequence[mixtures.EvalTask],
                examples: dict[str, list[EvalExample]], vocab: seqio.Vocabulary) -> dict[str, dict[str, float]]:
  """Runs every task's metrics on the scorer's predictions; one batched pass per kind."""
  predictions: dict[str, list[str]] = {}
  for kind, predict in (("generation", scorer.generate), ("classification", scorer.rank_choices)):
    names = [t.task_name for t in eval_tasks if t.kind == kind]
    flat = [ex for name in names for ex in examples[name]]
    if not flat:
      continue
    outputs = iter(predict(flat, vocab))
    for name in names:
      predictions[name] = [next(outputs) for _ in examples[name]]
  scores = {}
  for t in eval_tasks:
    task = seqio.get_mixture_or_task(t.task_name)
    targets = [ex.target for ex in examples[t.task_name]]
    scores[t.task_name] = {}
    for metric_fn in task.metric_fns:
      scores[t.task_name].update({k: float(v) for k, v in metric_fn(targets, predictions[t.task_name]).items()})
  return scores


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


@gin.configurable
def evaluate_heldout(model_dir: str = gin.REQUIRED, mixture_name: str = gin.REQUIRED, model: Any = gin.REQUIRED,
                     vocabulary: seqio.Vocabulary | None = None, step: int | None = None, seed: int = 0,
                     split: str = "test", max_examples_per_task: int = 100, batch_size: int = 128,
                     input_length: int = 256, target_length: int = 64,
                     out_dir: str | None = None) -> dict:
  """Scores a checkpoint of `model_dir` (latest unless `step`) and the step-0 model on the
  mixture's declared evaluation tasks; writes report.{json,md,png} to `model_dir/eval`."""
  split_decl, examples, vocab = load_eval_set(mixture_name, split, max_examples_per_task, input_length,
                                              vocabulary)
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  checkpointer = checkpoints.Checkpointer(model_dir)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise ValueError(f"no checkpoint in {checkpointer.directory}")

  scores_by_step, scorer = {}, None
  with state_lib.mesh_context(mesh, rules):
    for label, load in (("trained", functools.partial(state_lib.restore_params, checkpointer, step)),
                        ("baseline", state_lib.init_params)):
      graphdef, params = load(model, seed, mesh, rules)
      # Both parameter sets share one model structure, so they share compiled functions.
      scorer = (scorer.with_params(params) if scorer else
                CheckpointScorer(model, graphdef, params, mesh, batch_size, input_length, target_length))
      scores_by_step[label] = score_tasks(scorer, split_decl.eval_tasks, examples, vocab)
      logging.info("scored %s parameters on %d tasks", label, len(examples))

  report = report_lib.build_report(step, os.path.abspath(model_dir), scores_by_step["trained"],
                                   _task_info(split_decl, examples), 0, scores_by_step["baseline"])
  if jax.process_index() == 0:
    paths = report_lib.write_report(report, out_dir or os.path.join(model_dir, "eval"))
    logging.info("wrote %s", paths)
  return report


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
               best_mode: str = "max", vocabulary: seqio.Vocabulary | None = None):
    if every < 1:
      raise ValueError(f"PeriodicEvaluator.every={every}; expected a positive number of steps")
    self.mixture_name, self.every, self.split = mixture_name, every, split
    self.max_examples_per_task, self.vocabulary = max_examples_per_task, vocabulary
    self.batch_size, self.input_length, self.target_length = batch_size, input_length, target_length
    self.best_metric, self.best_mode = best_metric, best_mode
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
        model, graphdef, params, mesh, self.batch_size, self.input_length, self.target_length))
    scores = score_tasks(self._scorer, split_decl.eval_tasks, examples, vocab)
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

"""The evaluator: shared compiled functions, per-template scores, rank classification, predictions."""

import dataclasses
import json

import gin
import numpy as np
import pytest
import seqio

from sft_jax.data import mixtures
from sft_jax.data.collections import synthetic, synthetic_tasks, synthetic_vocab
from sft_jax.evaluation import evaluator, metrics, report, score_file
from sft_jax.inference import decoding
from sft_jax.models import hf_io, t5
from sft_jax.train import partitioning
from sft_jax.train import state as state_lib

TINY = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                          head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))
# Choices of one, two and three words ("b o x", "b o o k"): lengths differ, so normalizing by length matters.
CHOICE_TASK = synthetic.TASK_PREFIX + "word_with_letter"


def test_with_params_scores_exactly_like_a_scorer_built_for_those_params():
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  examples = evaluator.load_examples(synthetic.TASK_PREFIX + "pick_largest_number", "test", 6)
  vocab = synthetic_vocab.vocabulary()
  with state_lib.mesh_context(mesh, rules):
    graphdef, params_a = state_lib.init_params(TINY, 0, mesh, rules)
    _, params_b = state_lib.init_params(TINY, 1, mesh, rules)
    scorer_a = evaluator.CheckpointScorer(TINY, graphdef, params_a, mesh, 8, 64, 8)
    shared_b = scorer_a.with_params(params_b)
    fresh_b = evaluator.CheckpointScorer(TINY, graphdef, params_b, mesh, 8, 64, 8)
    pairs = [(ex.inputs, np.array(vocab.encode(ex.target) + [1], np.int32)) for ex in examples]
    a = scorer_a._run(scorer_a._score, pairs)
    b_shared, b_fresh = shared_b._run(shared_b._score, pairs), fresh_b._run(fresh_b._score, pairs)
    assert shared_b._score is scorer_a._score  # compiled once
    np.testing.assert_array_equal(b_shared, b_fresh)
    assert not np.allclose(a, b_shared)  # the other parameters were really used
    assert shared_b.generate(examples, vocab) == fresh_b.generate(examples, vocab)


def test_decode_config_reaches_generation_and_sampling_is_seeded():
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  examples = evaluator.load_examples(synthetic.TASK_PREFIX + "reverse_list", "test", 6)
  vocab = synthetic_vocab.vocabulary()
  with state_lib.mesh_context(mesh, rules):
    graphdef, params = state_lib.init_params(TINY, 0, mesh, rules)

    def texts(config, seed=0):
      scorer = evaluator.CheckpointScorer(TINY, graphdef, params, mesh, 4, 64, 8, config, seed)
      return scorer.generate(examples, vocab)

    greedy = texts(None)
    # Temperature 0 samples the argmax; a one-beam search is greedy too.
    assert texts(decoding.DecodeConfig(method="sample", temperature=0.0)) == greedy
    assert texts(decoding.DecodeConfig(method="beam", num_beams=1)) == greedy
    hot = decoding.DecodeConfig(method="sample", temperature=5.0)
    assert texts(hot, 3) == texts(hot, 3)
    assert texts(hot, 3) != texts(hot, 4) != greedy


def test_decode_config_from_gin():
  with gin.unlock_config():
    gin.parse_config(["import sft_jax.evaluation.evaluator",
                      "evaluate_heldout.decode_config = @decoding.DecodeConfig()",
                      "decoding.DecodeConfig.method = 'beam'", "decoding.DecodeConfig.num_beams = 3"])
  try:
    config = gin.query_parameter("evaluate_heldout.decode_config").scoped_configurable_fn()
    assert config == decoding.DecodeConfig(method="beam", num_beams=3)
  finally:
    gin.clear_config()


def test_load_examples_keep_template_and_prompt_text():
  examples = evaluator.load_examples(CHOICE_TASK, "test", 12)
  vocab = synthetic_vocab.vocabulary()
  spec = next(t for t in synthetic_tasks.TASKS if t.name == "word_with_letter")
  names = {t.name for t in spec.templates}
  assert all(ex.template in names for ex in examples)
  assert len({ex.template for ex in examples}) > 1
  for ex in examples:
    assert vocab.encode(ex.inputs_text) + [vocab.eos_id] == ex.inputs.tolist()  # the text the tokens came from
    assert ex.target in ex.answer_choices and ex.task == CHOICE_TASK


class _TableScorer:
  """Predicts from a table keyed by prompt text, as a CheckpointScorer's interface does."""

  def __init__(self, table):
    self.table, self.normalized = table, []

  def generate(self, examples, vocab):
    return [self.table[ex.inputs_text] for ex in examples]

  def rank_choices(self, examples, vocab, length_normalization=False):
    self.normalized.append(length_normalization)
    return [self.table[ex.inputs_text] for ex in examples]


def _example(task, k, template, target, choices=()):
  return evaluator.EvalExample(task, np.array([5, 1], np.int32), target, tuple(choices), template, f"{task} q{k}")


def test_score_tasks_per_template_hand_computed():
  gen, cls = synthetic.TASK_PREFIX + "add_one", CHOICE_TASK
  eval_tasks = [mixtures.EvalTask(gen, "arithmetic", False, "generation"),
                mixtures.EvalTask(cls, "extraction", False, "classification")]
  # add_one: template a right 2 of 3 times, b right 0 of 1; word_with_letter: x right 1 of 2.
  examples = {
      gen: [_example(gen, 0, "a", "4"), _example(gen, 1, "b", "7"), _example(gen, 2, "a", "2"),
            _example(gen, 3, "a", "10")],
      cls: [_example(cls, 0, "x", "p e n", ["b o x", "p e n"]), _example(cls, 1, "x", "b o x", ["b o x", "p e n"])],
  }
  answers = {f"{gen} q0": "4", f"{gen} q1": "8", f"{gen} q2": " 2 ", f"{gen} q3": "11",
             f"{cls} q0": "p e n", f"{cls} q1": "p e n"}
  scorer = _TableScorer(answers)
  results = evaluator.score_tasks(scorer, eval_tasks, examples, synthetic_vocab.vocabulary(),
                                  length_normalization=True)
  assert scorer.normalized == [True]
  assert results.tasks == {gen: {"exact_match": 0.5}, cls: {"accuracy": 0.5}}
  assert results.templates == {gen: {"a": {"exact_match": 2 / 3}, "b": {"exact_match": 0.0}},
                               cls: {"x": {"accuracy": 0.5}}}
  assert results.predictions[gen] == ["4", "8", " 2 ", "11"]

  records = evaluator.prediction_records(eval_tasks, examples, results.predictions)
  assert records[1] == {"task": gen, "template": "b", "index": 1, "inputs": f"{gen} q1", "targets": "7",
                        "prediction": "8"}
  assert records[5] == {"task": cls, "template": "x", "index": 1, "inputs": f"{cls} q1", "targets": "b o x",
                        "prediction": "p e n", "answer_choices": ["b o x", "p e n"]}
  assert [(r["task"], r["index"]) for r in records] == [(gen, k) for k in range(4)] + [(cls, 0), (cls, 1)]

  # A task whose examples name templates only in part is an error, not a silent partial split.
  examples[gen][1].template = None
  with pytest.raises(ValueError, match="1 of 4 examples have no template"):
    evaluator.score_tasks(scorer, eval_tasks, examples, synthetic_vocab.vocabulary())


def test_superni_metrics_through_the_evaluator_equal_the_official_definitions():
  name = "test_superni_style_task"
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["test"]),
        output_features={"targets": seqio.Feature(synthetic_vocab.vocabulary())},
        metric_fns=[metrics.superni_metrics])
  gen = synthetic.TASK_PREFIX + "add_one"
  eval_tasks = [mixtures.EvalTask(name, "superni", True, "generation"),
                mixtures.EvalTask(gen, "arithmetic", False, "generation")]
  targets = ["The cat sat.", "running fast", "yes", "no answer"]
  outputs = ["the cat  sat", "runs fast today", "", "No answer!"]
  examples = {name: [_example(name, k, None, t) for k, t in enumerate(targets)],
              gen: [_example(gen, 0, None, "4")]}
  table = {f"{name} q{k}": o for k, o in enumerate(outputs)} | {f"{gen} q0": "4"}
  results = evaluator.score_tasks(_TableScorer(table), eval_tasks, examples, synthetic_vocab.vocabulary())
  # Official normalization (lowercase, no punctuation, single spaces; articles kept): 1, 0, 0, 1.
  # ROUGE-L F on Porter-stemmed tokens: "the cat sat" 1; "run fast" vs "run fast todai": P 2/3, R 1,
  # F 0.8; "" vs "yes": 0; "no answer" 1. Mean x100.
  assert results.tasks[name] == {"exact_match": 50.0, "rougeL": 70.0}
  built = report.build_report(7, "/m", results.tasks,
                              {name: {"cluster": "superni", "heldout": True, "kind": "generation", "num_examples": 4},
                               gen: {"cluster": "arithmetic", "heldout": False, "kind": "generation", "num_examples": 1}},
                              0, results.tasks)
  assert built["heldout_mean"] == pytest.approx(0.7) and built["seen_mean"] == 1.0


def test_rank_classification_equals_argmax_over_score_file_logliks(tmp_path):
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  vocab = synthetic_vocab.vocabulary()
  examples = evaluator.load_examples(CHOICE_TASK, "test", 12)
  with state_lib.mesh_context(mesh, rules):
    graphdef, params = state_lib.init_params(TINY, 0, mesh, rules)
  # tools/score.py reads the same parameters from a model directory.
  model_dir = hf_io.save_checkpoint_dir(hf_io.LoadedModel(TINY, graphdef, params, None), str(tmp_path / "model"))
  lines = [{"inputs": ex.inputs_text, "targets": choice} for ex in examples for choice in ex.answer_choices]
  (tmp_path / "choices.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  score_file.score_file(model_dir, str(tmp_path / "choices.jsonl"), str(tmp_path / "scored.jsonl"), mesh=mesh,
                        rules=rules, vocabulary=vocab)
  scored = iter(json.loads(line) for line in open(tmp_path / "scored.jsonl"))
  per_example = [[next(scored) for _ in ex.answer_choices] for ex in examples]

  # Hand-computed argmax: summed log-likelihood, and log-likelihood per target token (EOS included).
  expected = {}
  for normalized in (False, True):
    value = (lambda r: r["loglik"] / r["num_tokens"]) if normalized else (lambda r: r["loglik"])
    expected[normalized] = [max(rows, key=value)["targets"] for rows in per_example]
  assert expected[False] != expected[True]  # the option changes at least one prediction here

  eval_task = mixtures.EvalTask(CHOICE_TASK, "extraction", False, "classification")
  with state_lib.mesh_context(mesh, rules):
    scorer = evaluator.CheckpointScorer(TINY, graphdef, params, mesh, 8, 128, 16)
    scores = scorer.choice_logliks(examples, vocab)
    for rows, (loglik, num_tokens) in zip(per_example, scores):
      np.testing.assert_allclose(loglik, [r["loglik"] for r in rows], atol=1e-4)
      assert num_tokens.tolist() == [r["num_tokens"] for r in rows]
    for normalized in (False, True):
      results = evaluator.score_tasks(scorer, [eval_task], {CHOICE_TASK: examples}, vocab,
                                      length_normalization=normalized)
      assert results.predictions[CHOICE_TASK] == expected[normalized]
      hits = sum(p == ex.target for p, ex in zip(expected[normalized], examples))
      assert results.tasks[CHOICE_TASK] == {"accuracy": hits / len(examples)}


    # Each prompt encoded once for its choices (score_choices) scores as one row per (prompt,
    # choice) does, also when examples have different numbers of choices and prompt buckets.
    assert scorer._score_choices is not None
    mixed = [dataclasses.replace(ex, answer_choices=ex.answer_choices[:1 + k % len(ex.answer_choices)],
                                 inputs=np.concatenate([ex.inputs[:-1]] * (1 + k % 3) + [ex.inputs[-1:]]))
             for k, ex in enumerate(examples)]
    assert len({len(ex.answer_choices) for ex in mixed}) > 1 and max(len(ex.inputs) for ex in mixed) > 64
    once = scorer.choice_logliks(mixed, vocab)
    scorer._score_choices = None
    for (got, got_n), (want, want_n) in zip(once, scorer.choice_logliks(mixed, vocab)):
      np.testing.assert_allclose(got, want, atol=1e-4)
      np.testing.assert_array_equal(got_n, want_n)


def test_pick_choice_ties_and_normalization():
  assert evaluator.pick_choice(np.array([-6.0, -4.0, -4.0]), np.array([3, 2, 2])) == 1  # first of a tie
  assert evaluator.pick_choice(np.array([-6.0, -4.0]), np.array([4, 2]), length_normalization=True) == 0

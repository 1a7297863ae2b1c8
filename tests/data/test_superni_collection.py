"""Super-NI registration from a small checkout written here: encoding, caps, splits, held-out split."""

import json
import os

import gin
import pytest
import seqio

from sft_jax.data import mixtures, templates
from sft_jax.data.collections import superni
from sft_jax.evaluation import metrics

GIN_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "gin_configs", "mixtures", "superni.gin")

ENTAIL = "task003_gamma_entailment"
ENTAIL_FILE = {
    "Contributors": ["x"],
    "Source": ["snli"],
    "Categories": ["Textual Entailment"],
    "Definition": ["  Decide whether the hypothesis follows from the premise "],
    "Positive Examples": [
        {"input": "Premise: A dog runs. Hypothesis: An animal moves", "output": "yes", "explanation": "e1"},
        {"input": "Premise: It rains. Hypothesis: It is sunny?", "output": " no. ", "explanation": "e2"},
        {"input": "Premise: third. Hypothesis: never shown", "output": "yes", "explanation": "e3"},
    ],
    "Negative Examples": [{"input": "Premise: a. Hypothesis: b", "output": "maybe", "explanation": "bad"}],
    "Instances": [
        {"id": "e-0", "input": "  Premise: Cats sleep. Hypothesis: Cats are awake  ", "output": ["no", "No.", "false"]},
        {"id": "e-1", "input": "Premise: Birds fly. Hypothesis: Birds move", "output": ["yes"]},
        {"id": "e-2", "input": "Premise: x. Hypothesis: y", "output": ["no"]},
    ],
}
# The Tk-Instruct collator's encoding, written out by hand: a period after a field that does
# not end in punctuation, " Positive Example k -" and " Output:" with their leading spaces.
ENTAIL_PROMPT = (
    "Definition: Decide whether the hypothesis follows from the premise.\n\n"
    " Positive Example 1 -\nInput: Premise: A dog runs. Hypothesis: An animal moves.\n Output: yes.\n\n"
    " Positive Example 2 -\nInput: Premise: It rains. Hypothesis: It is sunny?\n Output: no.\n\n"
    "Now complete the following example -\nInput: Premise: Cats sleep. Hypothesis: Cats are awake.\nOutput: ")


def _task_file(category: str, num_instances: int, prefix: str) -> dict:
  return {"Categories": [category], "Definition": [f"Answer the {prefix} question."],
          "Positive Examples": [{"input": f"{prefix} q{k}", "output": f"{prefix} a{k}", "explanation": ""}
                                for k in range(2)],
          "Negative Examples": [],
          "Instances": [{"id": f"{prefix}-{k}", "input": f"{prefix} question {k}", "output": [f"answer {k}"]}
                        for k in range(num_instances)]}


def write_checkout(root) -> str:
  """Four tasks: two for training (250 and 5 instances), one for testing, one in no split."""
  files = {"task001_alpha_qa": _task_file("Question Answering", 250, "alpha"),
           "task002_beta_generation": _task_file("Text Generation", 5, "beta"),
           ENTAIL: ENTAIL_FILE,
           "task004_delta_unused": _task_file("Misc", 2, "delta")}
  os.makedirs(root / "tasks")
  for name, content in files.items():
    # Pretty-printed, as the released files are: Categories sits in the header.
    (root / "tasks" / f"{name}.json").write_text(json.dumps(content, indent=4))
  os.makedirs(root / "splits" / "default")
  (root / "splits" / "default" / "train_tasks.txt").write_text("task001_alpha_qa\ntask002_beta_generation\n")
  (root / "splits" / "default" / "test_tasks.txt").write_text(f"{ENTAIL}\n\n")
  return str(root)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
  root = write_checkout(tmp_path_factory.mktemp("natural-instructions"))
  superni.register_superni(root, num_seen_eval_tasks=1)
  return root


def _examples(name: str, split: str) -> list[dict]:
  return seqio.get_mixture_or_task(name).source.examples(split)


def test_every_task_file_is_registered(checkout):
  for name in ("task001_alpha_qa", "task002_beta_generation", ENTAIL, "task004_delta_unused"):
    task = seqio.get_mixture_or_task(superni.task_name(name))
    assert task.metric_fns == [metrics.superni_metrics]
  assert superni.task_name(ENTAIL) == "superni.task003_gamma_entailment"


def test_rendering_matches_the_tk_instruct_encoding_exactly(checkout):
  first = _examples(superni.task_name(ENTAIL), "test")[0]
  assert first["inputs"] == ENTAIL_PROMPT
  # One reference is the training target (stripped, as the collator does); all are kept.
  assert first["targets"] in ("no", "No.", "false")
  assert first["references"] == ["no", "No.", "false"]
  assert first["template"] == "superni_def_pos2_neg0"


def test_instance_caps_and_splits(checkout):
  alpha = seqio.get_mixture_or_task(superni.task_name("task001_alpha_qa"))
  train, test = alpha.source.examples("train"), alpha.source.examples("test")
  assert alpha.num_input_examples("train") == 100 and alpha.num_input_examples("test") == 100
  # The test split is the file's first 100 instances (the official evaluation set) ...
  assert [ex["id"] for ex in test] == [f"alpha-{k}" for k in range(100)]
  # ... and the 100 training instances are drawn from the other 150, so a seen task is scored
  # on instances it was not trained on.
  train_ids = [int(ex["id"].split("-")[1]) for ex in train]
  assert len(set(train_ids)) == 100 and min(train_ids) >= 100 and max(train_ids) < 250
  assert alpha.source.examples("validation") == test
  # A task smaller than the caps keeps all of its instances in both splits.
  beta = seqio.get_mixture_or_task(superni.task_name("task002_beta_generation"))
  assert beta.num_input_examples("train") == 5 and beta.num_input_examples("test") == 5


def test_train_sample_is_fixed_by_the_seed(checkout):
  path = os.path.join(checkout, "tasks", "task001_alpha_qa.json")
  template = templates.SuperNITemplate()
  ids = lambda seed: [ex["id"] for ex in superni.SuperNITaskSource(
      path, template, max_train_instances=10, max_test_instances=100, seed=seed).examples("train")]
  assert ids(0) == ids(0) and ids(0) != ids(1)


def test_mixture_trains_the_train_tasks_examples_proportionally(checkout):
  mixture = seqio.get_mixture_or_task(superni.MIXTURE_NAME)
  assert mixtures.training_task_names(superni.MIXTURE_NAME) == [
      "superni.task001_alpha_qa", "superni.task002_beta_generation"]
  # Capped sizes 100 and 5, as Tk-Instruct's concatenation of the capped tasks samples them.
  shares = {t.name: mixture.get_rate(t) / mixture.total_rate for t in mixture.tasks}
  assert shares == pytest.approx({"superni.task001_alpha_qa": 100 / 105,
                                  "superni.task002_beta_generation": 5 / 105})


def test_test_tasks_are_declared_held_out_by_category(checkout):
  split = mixtures.get_heldout_split(superni.MIXTURE_NAME)
  assert split.eval_tasks == (
      mixtures.EvalTask("superni.task003_gamma_entailment", "Textual Entailment", True, "generation"),
      mixtures.EvalTask("superni.task001_alpha_qa", "Question Answering", False, "generation"))
  assert split.heldout_task_names == {"superni.task003_gamma_entailment"}
  mixtures.check_no_heldout_in_training(superni.MIXTURE_NAME)  # does not raise
  name = "test_superni.leaky"
  seqio.MixtureRegistry.add(name, [("superni.task001_alpha_qa", 1.0), ("superni.task003_gamma_entailment", 1.0)])
  try:
    with pytest.raises(ValueError, match=r"split of mixture 'superni_train' holds out: "
                                         r"'superni.task003_gamma_entailment' \(cluster 'Textual Entailment'\)"):
      mixtures.check_no_heldout_in_training(name)
  finally:
    seqio.MixtureRegistry.remove(name)


def test_end_to_end_tokenization_through_the_task_preprocessors(checkout):
  task = seqio.get_mixture_or_task(superni.task_name(ENTAIL))
  ds = task.get_dataset(sequence_length=None, split="test", shuffle=False, num_epochs=1)
  first = next(ds.as_numpy_iterator())
  vocab = task.output_features["inputs"].vocabulary
  # Byte vocabulary: UTF-8 bytes shifted by 3 (pad, EOS, UNK), then EOS = 1.
  assert first["inputs"].tolist() == [b + 3 for b in ENTAIL_PROMPT.encode("utf-8")] + [1]
  assert vocab.decode(first["inputs"].tolist()) == ENTAIL_PROMPT
  target = first["targets_pretokenized"].decode()
  assert first["targets"].tolist() == [b + 3 for b in target.encode("utf-8")] + [1]
  # The task's postprocessor gives the metric every reference of the instance.
  references = task.postprocess_fn(target, example=first, is_target=True)
  assert references == ["no", "No.", "false"]
  assert task.postprocess_fn("false", example=first, is_target=False) == "false"
  assert metrics.superni_metrics([references], ["false"])["exact_match"] == 100.0


def test_registering_again_is_a_no_op_only_with_the_same_settings(checkout):
  mixture = seqio.get_mixture_or_task(superni.MIXTURE_NAME)
  assert superni.register_superni(checkout, num_seen_eval_tasks=1) is mixture
  with pytest.raises(ValueError, match="already registered with other settings"):
    superni.register_superni(checkout, num_seen_eval_tasks=1, num_pos_examples=0)


@pytest.mark.parametrize("extra,error", [([], None), (["register_superni.num_pos_examples = 0"], "other settings")])
def test_gin_file_registers_from_superni_dir(checkout, extra, error):
  bindings = [f"SUPERNI_DIR = '{checkout}'", "register_superni.num_seen_eval_tasks = 1"] + extra
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([GIN_FILE], bindings, finalize_config=False)
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == superni.MIXTURE_NAME
    # The finalize hook calls register_superni with the bound settings: the fixture's own are a
    # no-op, others are refused (so the hook did pass them on).
    if error is None:
      gin.finalize()
    else:
      with pytest.raises(ValueError, match=error):
        gin.finalize()
  finally:
    gin.clear_config()
  assert superni.MIXTURE_NAME in seqio.MixtureRegistry.names()


def test_bad_checkouts_fail_naming_file_and_line(tmp_path):
  root = tmp_path / "ni"
  write_checkout(root)
  task_files = {"task001_alpha_qa": "x"}
  (tmp_path / "bad.txt").write_text("task001_alpha_qa\ntask009_missing\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: no task file task009_missing.json"):
    superni.read_split_file(str(tmp_path / "bad.txt"), task_files)
  (tmp_path / "twice.txt").write_text("task001_alpha_qa\n\ntask001_alpha_qa\n")
  with pytest.raises(ValueError, match=r"twice.txt:3: task task001_alpha_qa already listed at line 1"):
    superni.read_split_file(str(tmp_path / "twice.txt"), task_files)

  broken = dict(ENTAIL_FILE, Instances=[{"id": "z-0", "input": "q", "output": []}])
  (tmp_path / "task010_broken.json").write_text(json.dumps(broken))
  source = superni.SuperNITaskSource(str(tmp_path / "task010_broken.json"), templates.SuperNITemplate(),
                                     max_train_instances=100, max_test_instances=100, seed=0)
  with pytest.raises(ValueError, match=r"task010_broken.json: Instances\[0\].output"):
    source.examples("train")
  # A task with fewer positive examples than asked for shows those it has, as the collator does.
  short = dict(ENTAIL_FILE, **{"Positive Examples": []})
  (tmp_path / "task011_short.json").write_text(json.dumps(short))
  template = templates.SuperNITemplate(num_positive=2)
  source = superni.SuperNITaskSource(str(tmp_path / "task011_short.json"), template,
                                     max_train_instances=100, max_test_instances=100, seed=0)
  assert source.examples("test")[0]["inputs"].startswith(
      "Definition: Decide whether the hypothesis follows from the premise.\n\nNow complete")

  with pytest.raises(ValueError, match="num_seen_eval_tasks must be >= 1"):
    superni.register_superni(str(root), num_seen_eval_tasks=0)

  (tmp_path / "task012_nocat.json").write_text(json.dumps({"Definition": ["d"], "Instances": []}))
  with pytest.raises(ValueError, match=r"task012_nocat.json: Categories: expected a non-empty list"):
    superni.read_categories(str(tmp_path / "task012_nocat.json"))


class _FixedScorer:
  """Returns the given generations in order, as a CheckpointScorer would for these examples."""

  def __init__(self, outputs):
    self.outputs = outputs

  def generate(self, examples, vocab):
    return self.outputs[:len(examples)]

  def rank_choices(self, examples, vocab, length_normalization=False):
    raise AssertionError("no classification task here")


def test_evaluator_scores_every_reference_with_the_official_metric(checkout):
  from sft_jax.evaluation import evaluator  # evaluation sits above data: imported here only
  name = superni.task_name(ENTAIL)
  examples = evaluator.load_examples(name, "test", 3)
  # The metric sees all of an instance's references; the target text is one of them.
  assert [ex.metric_target for ex in examples] == [["no", "No.", "false"], ["yes"], ["no"]]
  assert all(ex.target in ex.metric_target for ex in examples)
  eval_task = mixtures.EvalTask(name, "Textual Entailment", True, "generation")
  vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  results = evaluator.score_tasks(_FixedScorer(["False", "no", "No!"]), [eval_task], {name: examples}, vocab)
  # "False" matches the third reference of the first instance only after normalization; "no" is
  # wrong for the second; "No!" normalizes to "no". ROUGE-L F is 1, 0, 1 on the same pairs.
  assert results.tasks[name] == {"exact_match": pytest.approx(66.6667), "rougeL": pytest.approx(66.6667)}

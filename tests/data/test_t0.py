"""T0 collection on `tfds.testing.mock_data`: every task renders, tokenizes and packs; evaluation tasks rank
their answer choices; user template folders override and add; the mixture's rates and held-out split."""

from __future__ import annotations

import os

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

from sft_jax.data import mixtures, packing, pipeline
from sft_jax.data.collections import t0
from sft_jax.data.vocabularies import EOS_ID

# Integer features below 4, so that a label indexes its list of endings; 8 examples give
# story_cloze (whose TFDS labels are 1-based) a few labels above 0.
MOCK = dict(num_examples=8, max_value=4)

TRAIN_TASKS = [d.task_name for d in t0.TRAIN_DATASETS]
SEEN_EVAL_TASKS = [d.task_name + t0.EVAL_SUFFIX for d in t0.TRAIN_DATASETS if d.eval_split]
HELDOUT_TASKS = [d.task_name for d in t0.HELDOUT_DATASETS]
T0_GIN = os.path.join(os.path.dirname(__file__), "..", "..", "gin_configs", "mixtures", "t0.gin")


@pytest.fixture(autouse=True)
def _no_user_templates():
  t0.set_template_dirs(())
  yield
  t0.set_template_dirs(None)


def _rows(task_name: str, split: str) -> list[dict]:
  with tfds.testing.mock_data(**MOCK):
    dataset = pipeline.get_dataset(task_name, sequence_length=None, split=split, shuffle=False, num_epochs=1,
                                   trim_output_features=False)
    return list(dataset.as_numpy_iterator())


def _dataset(task_name: str) -> t0.T0Dataset:
  key = task_name.removeprefix(t0.TASK_PREFIX).removesuffix(t0.EVAL_SUFFIX)
  return next(d for d in t0.TRAIN_DATASETS + t0.HELDOUT_DATASETS if d.task_name == t0.TASK_PREFIX + key)


@pytest.mark.parametrize("task_name", TRAIN_TASKS + SEEN_EVAL_TASKS + HELDOUT_TASKS)
def test_task_renders_tokenizes_and_packs(task_name):
  is_eval = task_name not in TRAIN_TASKS
  rows = _rows(task_name, "test" if is_eval else "train")
  assert rows, f"{task_name}: no example rendered"
  dataset = _dataset(task_name)
  names = {t.name for t in (t0.eval_templates(dataset.key) if is_eval else t0.templates(dataset.key).values())}
  for row in rows:
    assert row["template"].decode() in names
    assert row["inputs"][-1] == EOS_ID and row["targets"][-1] == EOS_ID and len(row["targets"]) > 1
    choices = [c.decode() for c in row["answer_choices"]]
    if is_eval:  # rank classification: the target is one of the template's answer choices
      assert len(choices) >= 2 and row["targets_pretokenized"].decode() in choices
  packer = packing.BestFitPacker(iter(rows), batch_size=4, input_length=1024, target_length=256)
  batches = list(packer)
  assert packer.counts.examples == len(rows) and packer.counts.dropped == 0
  assert sum(int(packing.batch_counts(b)["examples"]) for b in batches) == len(rows)


def test_every_example_is_rendered_by_every_template_that_applies():
  rows = _rows("t0.super_glue.rte", "validation")
  eval_names = [t.name for t in t0.eval_templates("super_glue/rte")]
  assert len(eval_names) >= 4 and len(rows) == MOCK["num_examples"] * len(eval_names)
  # Each raw example's rows come together, one per template in file order (the evaluator's
  # first N examples then cover every template alike).
  assert [r["template"].decode() for r in rows[:len(eval_names)]] == eval_names
  premise = rows[0]["inputs_pretokenized"].decode().splitlines()[0]
  assert all(premise in r["inputs_pretokenized"].decode() for r in rows[:len(eval_names)])


def test_templates_cover_every_dataset():
  for dataset in t0.TRAIN_DATASETS:
    assert len(t0.templates(dataset.key)) >= 3, dataset.key
  for dataset in t0.HELDOUT_DATASETS:
    assert len(t0.eval_templates(dataset.key)) >= 4, dataset.key
  # anli's rounds share the dataset-level file.
  assert t0.template_files("anli/r2", [t0.TEMPLATES_DIR]) == [f"{t0.TEMPLATES_DIR}/anli/templates.yaml"]


USER_RTE = """\
dataset: super_glue
subset: rte
templates:
  override-1: !Template
    answer_choices: yes ||| no
    id: override-1
    jinja: 'OVERRIDDEN {{ premise }} ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}'
    metadata: !TemplateMetadata
      original_task: true
    name: does_this_imply
    reference: ''
  added-1: !Template
    answer_choices: right ||| wrong
    id: added-1
    jinja: 'ADDED {{ hypothesis }} ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}'
    metadata: !TemplateMetadata
      original_task: true
    name: my_new_prompt
    reference: ''
  train-only: !Template
    id: train-only
    jinja: 'Echo {{ premise }} ||| {{ hypothesis }}'
    metadata: !TemplateMetadata
      original_task: false
    name: echo
    reference: ''
"""


def test_user_template_folder_overrides_and_adds(tmp_path):
  (tmp_path / "super_glue" / "rte").mkdir(parents=True)
  (tmp_path / "super_glue" / "rte" / "templates.yaml").write_text(USER_RTE)
  package = t0.templates("super_glue/rte")
  t0.set_template_dirs(None)
  # As a run sets it: the mixture's gin file, then a binding of its macro.
  gin.parse_config_files_and_bindings([T0_GIN], [f"{t0.TEMPLATE_DIRS_MACRO} = ['{tmp_path}']"])
  try:
    assert t0.template_dirs() == (str(tmp_path),)
    merged = t0.templates("super_glue/rte")
    rows = _rows("t0.super_glue.rte", "validation")
  finally:
    gin.clear_config()
  assert set(merged) == set(package) | {"my_new_prompt", "echo"}
  assert merged["does_this_imply"].id == "override-1"
  by_template = {}
  for row in rows:
    by_template.setdefault(row["template"].decode(), []).append(row)
  # The evaluation scores the overridden and added prompts, not the train-only one.
  assert set(by_template) == set(package) | {"my_new_prompt"}
  assert all(r["inputs_pretokenized"].startswith(b"OVERRIDDEN ") for r in by_template["does_this_imply"])
  assert all(r["inputs_pretokenized"].startswith(b"ADDED ") for r in by_template["my_new_prompt"])
  assert {tuple(r["answer_choices"]) for r in by_template["my_new_prompt"]} == {(b"right", b"wrong")}


def test_gin_file_binds_no_user_folder():
  t0.set_template_dirs(None)
  gin.parse_config_file(T0_GIN)
  try:
    assert t0.template_dirs() == ()
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == t0.MIXTURE_NAME
  finally:
    gin.clear_config()


def test_missing_user_folder_is_an_error(tmp_path):
  t0.set_template_dirs([tmp_path / "nope"])
  with pytest.raises(FileNotFoundError, match="nope"):
    t0.templates("super_glue/rte")


def test_mixture_rates_are_prompted_examples_capped_at_500k():
  mixture = seqio.get_mixture_or_task(t0.MIXTURE_NAME)
  assert sorted(t.name for t in mixture.tasks) == sorted(TRAIN_TASKS)
  with tfds.testing.mock_data(**MOCK):  # no split sizes: the rate uses the catalog's train size
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates["t0.glue.mrpc"] == 3_668 * len(t0.templates("glue/mrpc"))
  assert rates["t0.gigaword"] == t0.MIXTURE_CAP  # 3.8M examples x 3 templates
  assert rates["t0.trec"] == 5_452 * len(t0.templates("trec"))


def test_heldout_split_holds_out_t0_evaluation_datasets():
  split = mixtures.get_heldout_split(t0.MIXTURE_NAME)
  assert set(split.heldout_clusters) == set(t0.HELDOUT_CLUSTERS)
  assert split.heldout_task_names == set(HELDOUT_TASKS)
  assert {t.task_name for t in split.eval_tasks if not t.heldout} == set(SEEN_EVAL_TASKS)
  assert all(t.kind == "classification" for t in split.eval_tasks)
  mixtures.check_no_heldout_in_training(t0.MIXTURE_NAME)

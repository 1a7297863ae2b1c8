"""FLAN 2021 over TFDS, offline: every template and every task end to end on mocked TFDS data.

`tfds.testing.mock_data` fills each dataset's real feature spec with random values. A few
datasets encode their answer in plain integers or in the text (a 1-based Story Cloze label,
ReCoRD's "@placeholder"), which random values rarely satisfy; `_FIXES` makes those records
valid the way the real data is, so that every mock record yields an example.
"""

import importlib
import os
import re

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from sft_jax.data import collections, mixtures, packing, pipeline
from sft_jax.data import templates as templates_lib
from sft_jax.data.collections import flan2021
from sft_jax.data.collections import flan2021_templates as flan_templates

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_EXAMPLES = 5
LENGTHS = {"inputs": 512, "targets": 128}
_UNFILLED = re.compile(r"\{[A-Za-z_0-9]*\}")
_BY_NAME = {d.name: d for d in flan2021.DATASETS}


def _fix_copa(ex, i):
  ex["question"] = ("cause", "effect")[i % 2]


def _fix_record(ex, i):
  ex["query"] = ex["query"] + " @placeholder was there."
  ex["answers"] = ex["entities"][i % 2:i % 2 + 1]


def _fix_wsc273(ex, i):
  ex["label"], ex["pronoun_start"], ex["pronoun_end"] = np.int32(i % 2), np.int32(3), np.int32(6)


def _fix_arc(ex, i):
  ex["answerKey"] = ex["choices"]["label"][i % len(ex["choices"]["label"])]


_FIXES = {
    "ai2_arc": _fix_arc,
    "hellaswag": lambda ex, i: ex.update(label=np.int32(i % 4)),
    "para_crawl": lambda ex, i: ex.update(en=ex["en"] + "."),  # Fix Punctuation needs punctuation
    "story_cloze": lambda ex, i: ex.update(label=np.int32(1 + i % 2)),
    "sentiment140": lambda ex, i: ex.update(polarity=np.int32(4 * (i % 2))),
    "super_glue": lambda ex, i: (_fix_copa(ex, i) if "choice1" in ex else
                                 _fix_record(ex, i) if "entities" in ex else None),
    "winogrande": lambda ex, i: ex.update(sentence=ex["sentence"] + " _ did it."),
    "wsc273": _fix_wsc273,
}


def _as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """Random records of the builder's features, made valid by `_FIXES` (same for every split)."""
  del split, decoders, read_config, kwargs
  features = self.info.features
  examples = list(mocking.RandomFakeGenerator(features, NUM_EXAMPLES))
  if self.name in _FIXES:
    for i, ex in enumerate(examples):
      _FIXES[self.name](ex, i)
  signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype), features.get_tensor_info())
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


@pytest.fixture(scope="module")
def mock_tfds():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, as_dataset_fn=_as_dataset):
    yield
  # The few-shot pools were read from mocked data: let a later reader start afresh.
  for name in seqio.TaskRegistry.names():
    if name.startswith(flan2021.PREFIX):
      seqio.get_mixture_or_task(name).source._exemplars = None


def _source(name: str) -> flan2021.FlanTfdsSource:
  return seqio.get_mixture_or_task(name).source


def _canonical(dataset, split: str) -> list[dict]:
  """The dataset's mocked `split` records as canonical examples (None for skipped ones)."""
  source = _source(flan2021.task_name(dataset))
  records = source.tfds_dataset.load(split, shuffle_files=False).as_numpy_iterator()
  return [flan2021.canonical(dataset, r) for r in records]


# ----- Registry and mixtures -----


def test_clusters_and_variants_are_registered():
  assert {d.cluster for d in flan2021.DATASETS} == set(flan2021.CLUSTERS) and len(flan2021.CLUSTERS) == 12
  assert len(flan2021.DATASETS) >= 60
  for dataset in flan2021.DATASETS:
    family = flan_templates.FAMILIES[dataset.family]
    assert len(family.forward) + len(family.inverted) >= 9, dataset.family
    names = [flan2021.task_name(dataset, v) for v in flan2021.variants(dataset)]
    assert all(n in seqio.TaskRegistry.names() for n in names)
    # Classification datasets state options (and have a no-options variant); generation ones do not.
    assert family.uses_options == (dataset.kind == "classification") == ("noopt" in flan2021.variants(dataset))
  rte = _source("flan2021.rte")
  inverted = flan_templates.FAMILIES["nli"].inverted
  assert set(inverted) <= set(rte.templates("train")) and not set(inverted) & set(rte.templates("test"))
  assert flan2021.task_name("rte", "fewshot") in seqio.TaskRegistry.names()
  assert flan2021.task_name("wsc273", "fewshot") not in seqio.TaskRegistry.names()  # no training set to draw from
  assert set(flan2021.MANUAL_DOWNLOAD) <= set(_BY_NAME)


def test_flan_mixture_is_examples_proportional_with_cap():
  mixture = seqio.get_mixture_or_task(flan2021.MIXTURE_NAME)
  trained = {t.name for t in mixture.tasks}
  assert trained == {flan2021.task_name(d) for d in flan2021.DATASETS if d.trainable}
  rate = lambda name: mixture.get_rate(seqio.get_mixture_or_task(name))
  # CB has 200 training examples, SNLI is capped at 3,000.
  assert rate("flan2021.cb") / rate("flan2021.snli") == pytest.approx(200 / 3000)
  assert rate("flan2021.squad_v1") == pytest.approx(rate("flan2021.snli"))
  variants = seqio.get_mixture_or_task(flan2021.VARIANTS_MIXTURE_NAME)
  vrate = lambda name: variants.get_rate(seqio.get_mixture_or_task(name))
  # A dataset's three variants share its count.
  assert vrate("flan2021.rte") == pytest.approx(vrate("flan2021.rte.noopt"))
  assert vrate("flan2021.rte") == pytest.approx(vrate("flan2021.rte.fewshot"))
  assert 3 * vrate("flan2021.rte") / (2 * vrate("flan2021.squad_v1")) == pytest.approx(2290 / 30000)


@pytest.mark.parametrize("cluster", flan2021.CLUSTERS)
def test_leave_one_cluster_out(cluster):
  name = flan2021.leave_out_mixture_name(cluster)
  trained = set(mixtures.training_task_names(name))
  split = mixtures.get_heldout_split(name)
  in_cluster = [d for d in flan2021.DATASETS if d.cluster == cluster]
  heldout_eval = {t.task_name for t in split.eval_tasks if t.heldout}
  assert heldout_eval == {flan2021.task_name(d) for d in in_cluster}
  assert all(t.cluster == cluster for t in split.eval_tasks if t.heldout)
  every_variant = {flan2021.task_name(d, v) for d in in_cluster for v in flan2021.variants(d)}
  assert every_variant <= split.heldout_task_names and not trained & every_variant
  assert trained == {flan2021.task_name(d) for d in flan2021.DATASETS if d.trainable and d.cluster != cluster}
  mixtures.check_no_heldout_in_training(name)  # does not raise
  # The full FLAN mixture trains on the cluster, so it is refused under this split.
  with pytest.raises(ValueError, match="holds out"):
    mixtures.check_no_heldout_in_training(flan2021.MIXTURE_NAME, eval_mixtures=[name])


def test_flan2022_mix_weights_collections_and_checks_them(monkeypatch):
  name = "test_flan2021_collection"
  # A collection whose module was not imported: named so no other test can have registered it.
  monkeypatch.setitem(collections.REGISTERING_MODULES, "test_unimported", "some.collection_module")
  mixtures.register_mixture(name, ["flan2021.rte", "flan2021.cb"])
  try:
    mix = flan2021.register_flan2022_mix({flan2021.MIXTURE_NAME: 4.0, name: 1.0}, name="test_flan2022_mix")
    rte = seqio.get_mixture_or_task("flan2021.rte")
    assert mix.get_rate(seqio.get_mixture_or_task(flan2021.MIXTURE_NAME)) == pytest.approx(0.8)
    assert rte in mix.tasks
    with pytest.raises(ValueError, match="some.collection_module.*MIXTURE_MODULES"):
      flan2021.register_flan2022_mix({flan2021.MIXTURE_NAME: 4.0, "test_unimported_collection": 3.0},
                                     name="test_flan2022_bad")
    importlib.import_module("sft_jax.data.collections.synthetic")  # its own SentencePiece vocabulary
    with pytest.raises(ValueError, match="different vocabularies"):
      flan2021.register_flan2022_mix({flan2021.MIXTURE_NAME: 1.0, "synthetic_instructions": 1.0},
                                     name="test_flan2022_vocab")
  finally:
    for mixture in ("test_flan2022_mix", name):
      seqio.MixtureRegistry.remove(mixture)


def test_gin_weights_register_the_mix():
  name = "test_flan2021_gin_collection"
  mixtures.register_mixture(name, ["flan2021.rte"])
  gin.clear_config()
  try:
    gin.parse_config(f"FLAN2022_WEIGHTS = {{'{flan2021.MIXTURE_NAME}': 3.0, '{name}': 1.0}}")
    gin.finalize()
    mix = seqio.get_mixture_or_task(flan2021.FLAN2022_MIX)
    assert mix.get_rate(seqio.get_mixture_or_task(name)) == pytest.approx(0.25)
  finally:
    gin.clear_config()
    for mixture in (flan2021.FLAN2022_MIX, name):
      seqio.MixtureRegistry.remove(mixture)


@pytest.mark.parametrize("path", ["gin_configs/mixtures/flan2021.gin", "gin_configs/mixtures/flan2022_mix.gin"])
def test_gin_files_name_registered_mixtures_and_their_modules(path):
  gin.clear_config()
  gin.add_config_file_search_path(os.path.join(_REPO, "gin_configs"))
  try:
    gin.parse_config_file(os.path.join(_REPO, path))
    modules = gin.query_parameter("%MIXTURE_MODULES")
    mixture = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    if mixture == flan2021.FLAN2022_MIX:
      # t0 and superni register their own collections; here only the names are checked.
      weights = gin.query_parameter("%FLAN2022_WEIGHTS")
      assert flan2021.VARIANTS_MIXTURE_NAME in weights
      assert {collections.registering_module(c) for c in weights} == set(modules)
    else:
      assert modules == [flan2021.__name__] and mixture in seqio.MixtureRegistry.names()
  finally:
    gin.clear_config()


# ----- Templates on every dataset's canonical examples -----


def _check_rendered(inputs: str, targets: str, where: str) -> None:
  assert inputs.strip() and targets.strip(), where
  assert not _UNFILLED.search(inputs) and not _UNFILLED.search(targets), (where, inputs, targets)


@pytest.mark.parametrize("name", sorted(_BY_NAME))
def test_every_template_renders(mock_tfds, name):
  dataset = _BY_NAME[name]
  family = flan_templates.FAMILIES[dataset.family]
  examples = _canonical(dataset, "test")
  assert examples and all(e is not None for e in examples), "every mock record should map to an example"
  for ex in examples:
    for template in family.forward:
      inputs, targets = template.apply(ex)
      _check_rendered(inputs, targets, template.name)
      if dataset.kind == "classification":
        choices = template.answer_choices(ex)
        # The options block lists every answer choice and the target is one of them.
        assert targets in choices and templates_lib.format_options(choices) in inputs, template.name
        bare_inputs, bare_targets = template.without_options().apply(ex)
        assert "OPTIONS:" not in bare_inputs and bare_targets == targets
        assert template.without_options().answer_choices(ex) == choices  # still rank-classified
    for template in family.inverted:
      inputs, targets = template.apply(ex)
      _check_rendered(inputs, targets, template.name)
      # Inverted: the target is the original input field, and the prompt does not contain it.
      assert targets == str(ex[template.target_field]) and template.answer_choices(ex) is None


@pytest.mark.parametrize("name", sorted(n for n, d in _BY_NAME.items() if d.exemplars_from))
def test_fewshot_prompts_hold_k_exemplars(mock_tfds, name):
  dataset = _BY_NAME[name]
  source = _source(flan2021.task_name(dataset, "fewshot"))
  pool = source.exemplars()
  assert len(pool) == NUM_EXAMPLES
  ex = _canonical(dataset, "test")[0]
  for template in source.templates("train"):
    inputs, targets = template.apply(ex)
    base_inputs, base_targets = template.base.apply(ex)
    assert inputs.endswith(base_inputs) and targets == base_targets
    shots = [flan2021.FEWSHOT_JOINER.join(template.base.apply(e)) for e in pool]
    assert sum(shot in inputs for shot in shots) == dataset.fewshot_k == template.k, template.name


# ----- Tasks end to end: TFDS -> render -> tokenize -> pack -----


def _task_names() -> list[str]:
  return sorted(flan2021.task_name(d, v) for d in flan2021.DATASETS for v in flan2021.variants(d))


# A fast subset: every variant kind, classification and generation, long and multi-field inputs.
FAST_TASKS = ["flan2021.rte", "flan2021.rte.noopt", "flan2021.rte.fewshot", "flan2021.squad_v2",
              "flan2021.record", "flan2021.wmt16_deen", "flan2021.xsum.fewshot", "flan2021.coqa",
              "flan2021.wsc273"]


def _check_task(name: str) -> None:
  source = _source(name)
  dataset, variant = source.dataset, source.variant
  task = seqio.get_mixture_or_task(name)
  for split in ("train", "test"):
    if split not in source.splits:
      continue
    templates = {t.name: t for t in source.templates(split)}
    # Mocked TFDS has no split sizes, which the in-memory cache decision reads.
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, num_epochs=1, try_in_mem_cache=False)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == NUM_EXAMPLES, (name, split)
    for ex in examples:
      inputs, targets = ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()
      _check_rendered(inputs, targets, name)
      template = templates[ex["template"].decode()]
      base = getattr(template, "base", template)
      choices = [c.decode() for c in ex["answer_choices"]]
      if isinstance(base, templates_lib.InvertedTemplate):
        assert split == "train" and not choices  # inverted prompts are for training only
      elif dataset.kind == "classification":
        assert targets in choices
        # Few-shot prompts keep the options of the forward templates they are built on.
        assert ("OPTIONS:" in inputs) == (variant != "noopt")
        if variant != "noopt":
          assert inputs.endswith(templates_lib.format_options(choices)) or \
              templates_lib.format_options(choices) + "\n" in inputs
      assert ex["inputs"][-1] == ex["targets"][-1] == 1  # EOS
    arrays = pipeline.iterate_numpy(ds, ["inputs", "targets"])
    packer = packing.BestFitPacker(arrays, batch_size=2, input_length=LENGTHS["inputs"],
                                   target_length=LENGTHS["targets"])
    batches = list(packer)
    assert packer.counts.examples == NUM_EXAMPLES and batches
    assert all(b["encoder_input_tokens"].shape == (2, LENGTHS["inputs"]) for b in batches)


@pytest.mark.parametrize("name", FAST_TASKS)
def test_task_end_to_end(mock_tfds, name):
  _check_task(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(_task_names()) - set(FAST_TASKS)))
def test_every_task_end_to_end(mock_tfds, name):
  _check_task(name)

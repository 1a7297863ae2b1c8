"""Offline caching with Apache Beam: cached tasks read back equal to the uncached ones, training reads the cache."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os

# Beam is in the [test] extra: without it these tests must fail, not be skipped.
import apache_beam  # noqa: F401
import gin
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from sft_jax.data import caching, mixtures, pipeline, preprocessors
from sft_jax.data.collections import synthetic, synthetic_tasks, synthetic_vocab


# Finite copies of three synthetic tasks (the registered ones stream unlimited training examples
# and have no cache placeholder).
TASKS = synthetic_tasks.TASKS[:3]
SIZES = {"train": 48, "validation": 16}
PREFIX = "cache_test."
MIXTURE = PREFIX + "mixture"
SHARDS = 2
# The DirectRunner's in-process engine: DirectRunner itself first tries to download Beam's Prism
# runner, and tests use no network.
RUNNER = ("--runner=FnApiRunner",)
TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "cache_tasks.py")


def _dataset_fn(task: synthetic_tasks.SyntheticTask):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    examples = list(itertools.islice(synthetic.render_examples(task, task.templates, split, 0), SIZES[split]))
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
        "inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string),
        "answer_choices": tf.TensorSpec([None], tf.string), "template": tf.TensorSpec([], tf.string)})
  return dataset_fn


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  names = []
  for task in TASKS:
    name = PREFIX + task.name
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_dataset_fn(task), splits=tuple(SIZES)),
        output_features=preprocessors.text_to_text_features(synthetic_vocab.vocabulary()),
        preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim])
    names.append(name)
  seqio.MixtureRegistry.add(MIXTURE, [(name, mixtures.rate_fn()) for name in names])
  cache_dir = str(tmp_path_factory.mktemp("seqio_cache"))
  global_dirs = list(seqio.utils.get_global_cache_dirs())
  try:
    written = caching.cache_tasks(cache_dir, tasks=[PREFIX + ".*"], pipeline_options=RUNNER, min_shards=SHARDS)
    yield names, cache_dir, written
  finally:
    seqio.utils.set_global_cache_dirs(global_dirs)
    seqio.MixtureRegistry.remove(MIXTURE)
    for name in names:
      seqio.TaskRegistry.remove(name)


def _features(example: dict) -> tuple:
  return (tuple(example["inputs"]), tuple(example["targets"]), example["inputs_pretokenized"],
          example["targets_pretokenized"], example["template"], tuple(example["answer_choices"]))


def _examples(name: str, split: str, use_cached: bool) -> list[tuple]:
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(None, split, use_cached=use_cached, shuffle=False, trim_output_features=False)
  return [_features(ex) for ex in dataset.as_numpy_iterator()]


def test_cached_tasks_read_back_as_the_uncached_examples(cached):
  names, cache_dir, written = cached
  names = sorted(names)  # the order select_tasks finds them in
  assert written == [os.path.join(cache_dir, seqio.get_task_dir_from_name(n)) for n in names]
  for name, task_dir in zip(names, written):
    assert seqio.get_mixture_or_task(name).cache_dir == task_dir
    for split, size in SIZES.items():
      fresh = _examples(name, split, use_cached=False)
      from_cache = _examples(name, split, use_cached=True)
      assert len(fresh) == size
      # The cache pipeline shuffles examples across its files: same examples, new order.
      assert sorted(from_cache) == sorted(fresh)
      assert seqio.get_mixture_or_task(name).get_cached_stats(split)["examples"] == size
      info = json.loads(tf.io.gfile.GFile(seqio.get_cached_info_path(task_dir, split)).read())
      assert info["num_shards"] == SHARDS
      assert len(tf.io.gfile.glob(seqio.get_cached_tfrecord_prefix(task_dir, split) + "-*")) == SHARDS


def test_cached_tasks_are_skipped_and_uncacheable_ones_refused(cached):
  names, cache_dir, _ = cached
  assert caching.cache_tasks(cache_dir, tasks=[names[0]], pipeline_options=RUNNER) == []
  with pytest.raises(ValueError, match="cannot be cached"):
    caching.cache_tasks(cache_dir, tasks=[synthetic.task_name(TASKS[0])], pipeline_options=RUNNER)
  with pytest.raises(ValueError, match="no registered task matches"):
    caching.select_tasks(["cache_test\\.nothing"])
  assert caching.select_tasks(mixture_names=[MIXTURE]) == sorted(names)


def test_pipeline_reads_the_cache_of_a_mixture_and_refuses_half_cached_ones(cached):
  names, cache_dir, _ = cached
  gin.bind_parameter("cached_task_dirs.dirs", [cache_dir])
  try:
    assert pipeline.use_cached(MIXTURE)
  finally:
    gin.clear_config()
  # Mixing rates count the cached examples (seqio reads a cached task's statistics).
  mixture = seqio.get_mixture_or_task(MIXTURE)
  assert [mixture.get_rate(seqio.get_mixture_or_task(n)) for n in names] == [SIZES["train"]] * len(names)
  seqio.TaskRegistry.add(PREFIX + "uncached", source=seqio.get_mixture_or_task(names[0]).source,
                         output_features=seqio.get_mixture_or_task(names[0]).output_features,
                         preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()])
  seqio.MixtureRegistry.add(PREFIX + "half", [(names[0], 1.0), (PREFIX + "uncached", 1.0)])
  try:
    with pytest.raises(ValueError, match=r"are cached but \['cache_test.uncached'\] are not"):
      pipeline.use_cached(PREFIX + "half")
  finally:
    seqio.MixtureRegistry.remove(PREFIX + "half")
    seqio.TaskRegistry.remove(PREFIX + "uncached")


@pytest.mark.slow
def test_training_reads_the_cache(cached, tmp_path, monkeypatch):
  from sft_jax.models import t5  # pylint: disable=g-import-not-at-top
  from sft_jax.train import loop  # pylint: disable=g-import-not-at-top

  names, _, _ = cached

  def uncached_read(*args, **kwargs):
    raise AssertionError("training preprocessed a cached task again")

  for name in names:
    monkeypatch.setattr(seqio.get_mixture_or_task(name).source, "get_dataset", uncached_read)
  model = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                             head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))
  state = loop.train(model_dir=str(tmp_path / "run"), mixture_or_task_name=MIXTURE, train_steps=2, model=model,
                     batch_size=4, input_length=128, target_length=32, checkpoint_every=2, log_every=1)
  assert int(state.step) == 2


def test_tool_passes_beam_options_through(cached, tmp_path, capsys):
  names, _, _ = cached
  spec = importlib.util.spec_from_file_location("cache_tasks_tool", TOOL)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  out_dir = str(tmp_path / "cache")
  # Cached already in the fixture's directory: --overwrite writes a copy here.
  tool.main([f"--output_cache_dir={out_dir}", f"--tasks={names[0]}", "--splits=validation", "--min_shards=1",
             "--overwrite", *RUNNER])
  task_dir = os.path.join(out_dir, seqio.get_task_dir_from_name(names[0]))
  assert capsys.readouterr().out.strip() == task_dir
  assert sorted(os.listdir(task_dir)) == ["COMPLETED", "info.validation.json", "stats.validation.json",
                                          "validation.tfrecord-00000-of-00001"]


def test_t0_task_is_cacheable(tmp_path):
  from sft_jax.data.collections import t0  # pylint: disable=g-import-not-at-top

  # A copy of a T0 task (TFDS source, Jinja rendering in tf.numpy_function): the T0 tasks
  # themselves would remember this cache for the rest of the session.
  original = seqio.get_mixture_or_task("t0.super_glue.rte")
  name = PREFIX + "t0_rte"
  seqio.TaskRegistry.add(name, source=original.source, output_features=original.output_features,
                         preprocessors=original.preprocessors)
  global_dirs = list(seqio.utils.get_global_cache_dirs())
  try:
    with tfds.testing.mock_data(num_examples=4, max_value=4):
      caching.cache_tasks(str(tmp_path), tasks=[name], splits=["validation"], pipeline_options=RUNNER, min_shards=1)
      fresh = _examples(name, "validation", use_cached=False)
      from_cache = _examples(name, "validation", use_cached=True)
  finally:
    seqio.utils.set_global_cache_dirs(global_dirs)
    seqio.TaskRegistry.remove(name)
  assert len(fresh) == 4 * len(t0.eval_templates("super_glue/rte"))
  assert sorted(from_cache) == sorted(fresh)

"""The synthetic mixture as seqio sees it: held-out split, determinism, exact replay."""

import dataclasses
import itertools

import numpy as np
import pytest
import seqio

from sft_jax.data import mixtures, pipeline
from sft_jax.data.collections import synthetic, synthetic_tasks


def test_mixture_trains_exactly_the_seen_tasks():
  trained = set(mixtures.training_task_names(synthetic.MIXTURE_NAME))
  seen = {synthetic.task_name(t) for t in synthetic_tasks.TASKS if not t.heldout}
  assert trained == seen and len(trained) >= 30


def test_heldout_tasks_are_absent_from_training():
  split = mixtures.get_heldout_split(synthetic.MIXTURE_NAME)
  trained = set(mixtures.training_task_names(synthetic.MIXTURE_NAME))
  assert split.heldout_task_names and not split.heldout_task_names & trained
  # Whole held-out clusters, held-out tasks in seen clusters, held-out phrasings of seen tasks.
  heldout = [t for t in split.eval_tasks if t.heldout]
  assert {t.cluster for t in heldout} >= set(synthetic_tasks.HELDOUT_CLUSTERS)
  assert any(t.task_name.endswith(synthetic.HELDOUT_TEMPLATES_SUFFIX) for t in heldout)
  seen_clusters = {t.cluster for t in split.eval_tasks if not t.heldout}
  assert any(t.cluster in seen_clusters and not t.task_name.endswith(synthetic.HELDOUT_TEMPLATES_SUFFIX)
             for t in heldout)
  assert {t.kind for t in heldout} == {"generation", "classification"}
  mixtures.check_no_heldout_in_training(synthetic.MIXTURE_NAME)  # does not raise


def test_trainer_refuses_a_mixture_with_a_heldout_task():
  split = mixtures.get_heldout_split(synthetic.MIXTURE_NAME)
  leaked = sorted(split.heldout_task_names)[0]
  name = "test_leaky_mixture"
  seqio.MixtureRegistry.add(name, [(leaked, 1.0), ("synthetic.reverse_list", 1.0)])
  try:
    with pytest.raises(ValueError, match=leaked):
      mixtures.check_no_heldout_in_training(name)
  finally:
    seqio.MixtureRegistry.remove(name)


def test_eval_split_is_fixed_and_disjoint_from_training():
  task = seqio.get_mixture_or_task("synthetic.reverse_list")
  read = lambda split, **kw: [ex["inputs_pretokenized"] for ex in task.get_dataset(
      None, split=split, shuffle=False, num_epochs=1, **kw).take(200).as_numpy_iterator()]
  test_a, test_b = read("test"), read("test", seed=123)
  assert test_a == test_b and len(test_a) == synthetic.EVAL_EXAMPLES["test"]
  assert not set(test_a) & set(read("train", seed=0))


def _batches(train_input, n):
  return [next(train_input) for _ in range(n)]


def test_train_input_is_deterministic_and_replays_exactly():
  config = pipeline.InputConfig(synthetic.SMOKE_MIXTURE_NAME, batch_size=4, input_length=128, target_length=32, seed=3)
  full = _batches(pipeline.TrainInput(config), 5)
  # Prefetched in a thread, without tf.data autotuning: the same batches.
  untuned = dataclasses.replace(config, autotune=False)
  prefetching = pipeline.TrainInput(untuned, prefetch=2)
  again = _batches(prefetching, 5)
  # The saved position counts batches handed out, not the ones the thread produced ahead.
  assert prefetching.get_state()["batches_emitted"] == 5
  prefetching.close()
  resumed_input = pipeline.TrainInput(config, prefetch=3)
  _batches(resumed_input, 2)
  state = resumed_input.get_state()
  resumed_input.close()
  restored = pipeline.TrainInput(config)
  restored.set_state(state)
  resumed = full[:2] + _batches(restored, 3)
  started_at = full[:2] + _batches(pipeline.TrainInput(config, prefetch=2, state=state), 3)
  for a, b, c, d in zip(full, again, resumed, started_at):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
      np.testing.assert_array_equal(a[k], c[k])
      np.testing.assert_array_equal(a[k], d[k])
  other_seed = next(pipeline.TrainInput(pipeline.InputConfig(
      synthetic.SMOKE_MIXTURE_NAME, batch_size=4, input_length=128, target_length=32, seed=4)))
  assert not np.array_equal(other_seed["encoder_input_tokens"], full[0]["encoder_input_tokens"])


def test_fixed_data_shards_give_the_same_global_batch_on_any_process_count():
  config = pipeline.InputConfig(synthetic.SMOKE_MIXTURE_NAME, batch_size=4, input_length=128, target_length=32, seed=3,
                                data_shards=2)
  one_process_input = pipeline.TrainInput(config)
  one_process = _batches(one_process_input, 2)
  per_process = [_batches(pipeline.TrainInput(config, process_index=i, process_count=2), 2) for i in range(2)]
  for step, batch in enumerate(one_process):
    for k in batch:
      # Process i holds the rows of shard i: the global batch is their concatenation.
      np.testing.assert_array_equal(batch[k], np.concatenate([p[step][k] for p in per_process]))
  # The two shards read different examples.
  assert not np.array_equal(per_process[0][0]["encoder_input_tokens"], per_process[1][0]["encoder_input_tokens"])
  # A checkpoint's position is refused under another shard count, with the binding that fixes it.
  state = one_process_input.get_state()
  with pytest.raises(ValueError, match="train.data_shards=2"):
    pipeline.TrainInput(dataclasses.replace(config, data_shards=4), state=state)
  with pytest.raises(ValueError, match="not divisible by the process count"):
    pipeline.TrainInput(dataclasses.replace(config, data_shards=3), process_count=2)


@pytest.mark.parametrize("name", ["pick_largest_number", "reverse_list"])
def test_task_source_yields_the_rendered_examples_in_order(name):
  task = next(t for t in synthetic_tasks.TASKS if t.name == name)
  # More than one chunk, the last one partial; choices are unpadded exactly.
  count = synthetic.CHUNK_SIZE + 7
  expected = list(itertools.islice(synthetic.render_examples(task, task.templates, "train", 5), count))
  source = seqio.get_mixture_or_task(synthetic.task_name(task)).source
  got = list(source.get_dataset("train", shuffle=False, seed=5).take(count).as_numpy_iterator())
  assert len(got) == count
  for e, g in zip(expected, got):
    assert g["inputs"].decode() == e["inputs"] and g["targets"].decode() == e["targets"]
    assert [c.decode() for c in g["answer_choices"]] == e["answer_choices"]
    assert g["template"].decode() == e["template"]
  assert any(e["answer_choices"] for e in expected) == task.is_classification


def test_tasks_stream_in_their_seeded_order_without_a_shuffle_buffer():
  task = next(t for t in synthetic_tasks.TASKS if t.name == "reverse_list")
  seqio_task = seqio.get_mixture_or_task(synthetic.task_name(task))
  assert seqio_task.shuffle_buffer_size is None and seqio_task.source.performs_internal_shuffling

  def first_prompts(seed: int) -> list[str]:
    dataset = seqio_task.get_dataset(sequence_length=None, split="train", shuffle=True, seed=seed,
                                     trim_output_features=False)
    return [ex["inputs_pretokenized"].decode() for ex in dataset.take(40).as_numpy_iterator()]

  # shuffle=True reads the seed's stream as generated: no buffer reorders it.
  rendered = itertools.islice(synthetic.render_examples(task, task.templates, "train", 5), 40)
  assert first_prompts(5) == [e["inputs"] for e in rendered]
  # The randomness the buffer would add comes from the seed instead.
  assert first_prompts(6) != first_prompts(5)

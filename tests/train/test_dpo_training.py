"""SFT -> DPO through the trainer on the synthetic preference pairs: the reference equals tools/score.py,
the preference metrics are logged, a LoRA-DPO run resumes, and the pairs are what the collection says."""

import importlib.util
import itertools
import json
import os
import pathlib
import random

import jax
import numpy as np
import pytest
from flax import nnx

from sft_jax.data import pipeline, preference
from sft_jax.data.collections import synthetic, synthetic_preferences, synthetic_tasks, synthetic_vocab
from sft_jax.models import hf_t5, lora, t5
from sft_jax.train import checkpoints, dpo, loop, optimizers, partitioning
from sft_jax.train import metrics as train_metrics
from sft_jax.train import state as state_lib

_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                          head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))
LENGTHS = dict(input_length=96, target_length=16)


def _load_tool(name):
  spec = importlib.util.spec_from_file_location(name, _ROOT / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---- the collection ----------------------------------------------------------------------------

def test_pairs_are_deterministic_and_rejected_is_a_wrong_answer_in_format():
  for task in synthetic_tasks.TASKS:
    if task.heldout:
      continue
    pairs = list(itertools.islice(synthetic_preferences.render_pairs(task, task.templates, "train", 0), 20))
    again = list(itertools.islice(synthetic_preferences.render_pairs(task, task.templates, "train", 0), 20))
    assert pairs == again and len(pairs) == 20, task.name
    for pair in pairs:
      assert pair["chosen"] != pair["rejected"], task.name
    if task.is_classification:
      instances = synthetic_tasks.instances(task, "train", 0)
      choices = [set(i["answer_choices"]) for i in itertools.islice(instances, 40)]
      assert all(any({p["chosen"], p["rejected"]} <= c for c in choices) for p in pairs), task.name


@pytest.mark.parametrize("target,want", [
    ("7", {"5", "6", "8", "9"}), ("0", {"0", "1", "2"}),  # "0" again: wrong_answer then falls back
    ("rain, road", {"road, rain"}), ("c a t", {"a c t", "c t a", "a t", "c t", "c a"}),
    ("key", {None}),
])
def test_perturbations_are_near_misses_in_the_answer_format(target, want):
  # Every near miss of the target, and nothing else, over enough seeds to draw each.
  assert {synthetic_preferences._perturbed(target, random.Random(seed)) for seed in range(60)} == want


def test_wrong_answer_falls_back_to_another_instance_and_picks_another_choice():
  rng = random.Random(0)
  assert synthetic_preferences.wrong_answer({"target": "key"}, rng, "pen") == "pen"
  assert synthetic_preferences.wrong_answer({"target": "key"}, rng, "key") is None
  assert synthetic_preferences.wrong_answer({"target": "yes", "answer_choices": ["yes", "no"]}, rng, "x") == "no"


def test_pair_batcher_rows_and_counts():
  vocab = synthetic_vocab.vocabulary()
  encode = lambda text: np.asarray(vocab.encode(text) + [1], np.int32)  # noqa: E731
  examples = [{"inputs": encode("Reverse: a, b"), "chosen": encode("b, a"), "rejected": encode("a, b")},
              {"inputs": encode("Same?"), "chosen": encode("x y z w"), "rejected": encode("x y z q")},
              {"inputs": encode("Copy: b"), "chosen": encode("b"), "rejected": encode("c")}]
  batcher = preference.PairBatcher(iter(examples), rows=2, input_length=8, target_length=3)
  batch = next(batcher)
  # The second pair differs only after its third token: cut to 3 it is no preference, and is dropped.
  assert batcher.counts.examples == 3 and batcher.counts.dropped == 1
  np.testing.assert_array_equal(batch["chosen_decoder_target_tokens"][1][:2], [vocab.encode("b")[0], 1])
  np.testing.assert_array_equal(batch["rejected_decoder_input_tokens"][1][:2], [0, vocab.encode("c")[0]])
  assert preference.batch_counts(batch)["examples"] == 2.0


# ---- the trainer -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  """A tiny T5 after a few SFT steps on the synthetic instructions."""
  directory = str(tmp_path_factory.mktemp("sft"))
  loop.train(model_dir=directory, mixture_or_task_name=synthetic.MIXTURE_NAME, model=TINY, train_steps=4,
             batch_size=8, checkpoint_every=4, log_every=4, **LENGTHS)
  # The model bindings a gin-configured run (tools/train.py) leaves in its config.gin, for tools/score.py.
  with open(os.path.join(directory, "config.gin"), "w") as f:
    f.write("\n".join(hf_t5.model_gin(TINY)) + "\n")
  return directory


def _pairs(n=6):
  task = next(t for t in synthetic_tasks.TASKS if t.name == "reverse_list")
  return list(itertools.islice(synthetic_preferences.render_pairs(task, task.templates, "test", 0), n))


@pytest.mark.slow
def test_trainer_reference_log_probs_equal_tools_score(sft_dir, tmp_path):
  pairs = _pairs()
  vocab = synthetic_vocab.vocabulary()
  encode = lambda text: np.asarray(vocab.encode(text) + [1], np.int32)  # noqa: E731
  batch = preference.pair_batch([{k: encode(p[k]) for k in preference.TEXT_FEATURES} for p in pairs], **LENGTHS)
  # The reference as the DPO trainer builds it: the SFT checkpoint's parameters.
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  optimizer = optimizers.create_optimizer(optimizers.learning_rate_schedule())
  graphdef, state = state_lib.init_train_state(TINY, optimizer, 1, mesh, rules, init_checkpoint=sft_dir)
  chosen, rejected = dpo.reference_log_probs(TINY, graphdef, state.params, None,
                                             {k: jax.numpy.asarray(v) for k, v in batch.items()},
                                             reference_params=state.params)
  score = _load_tool("score")
  for side, got in (("chosen", chosen), ("rejected", rejected)):
    lines = tmp_path / f"{side}.jsonl"
    lines.write_text("".join(json.dumps({"inputs": p["inputs"], "targets": p[side]}) + "\n" for p in pairs))
    score.main([f"--checkpoint={sft_dir}", f"--inputs={lines}", f"--out={tmp_path / side}.out.jsonl",
                f"--vocabulary={synthetic_vocab.MODEL_PATH}"])
    want = [json.loads(line)["loglik"] for line in open(f"{tmp_path / side}.out.jsonl")]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


@pytest.mark.slow
def test_lora_dpo_run_logs_preference_metrics_and_resumes(sft_dir, tmp_path):
  model = lora.LoRAModel(TINY, targets=("query", "value", "wo"), rank=4, alpha=8.0)
  run = dict(mixture_or_task_name=synthetic_preferences.MIXTURE_NAME, model=model, batch_size=8,
             checkpoint_every=3, log_every=3, init_checkpoint=sft_dir, dpo=dpo.DPOConfig(beta=0.5), **LENGTHS)
  directory = str(tmp_path / "dpo")
  loop.train(model_dir=directory, train_steps=3, **run)
  logged = train_metrics.read_metrics(directory)
  for key in ("loss", "reward_accuracy", "reward_margin", "chosen_log_prob", "rejected_log_prob"):
    assert 3 in logged[key], key
  assert 0.0 <= logged["reward_accuracy"][3] <= 1.0
  # Resumes from its own checkpoint; the frozen base (the reference) still comes from the SFT run.
  state = loop.train(model_dir=directory, train_steps=6, **run)
  assert checkpoints.Checkpointer(directory).all_steps()[-1] == 6 and int(state.step) == 6
  _, sft_state = state_lib.init_train_state(TINY, optimizers.create_optimizer(optimizers.learning_rate_schedule()),
                                            1, partitioning.create_mesh(), partitioning.logical_axis_rules(),
                                            init_checkpoint=sft_dir)
  sft_flat, frozen_flat = dict(nnx.to_flat_state(sft_state.params)), dict(nnx.to_flat_state(state.frozen))
  assert set(frozen_flat) == set(sft_flat)
  for path, variable in sft_flat.items():
    np.testing.assert_array_equal(np.asarray(frozen_flat[path][...]), np.asarray(variable[...]))


def test_preference_pairs_feed_the_trainer_input():
  config = pipeline.InputConfig(synthetic_preferences.MIXTURE_NAME, 4, feature_layout="preference_pairs", **LENGTHS)
  train_input = pipeline.TrainInput(config)
  try:
    batch = next(train_input)
  finally:
    train_input.close()
  assert batch["encoder_input_tokens"].shape == (4, 96)
  assert batch["chosen_decoder_target_tokens"].shape == batch["rejected_decoder_target_tokens"].shape == (4, 16)
  assert not np.array_equal(batch["chosen_decoder_target_tokens"], batch["rejected_decoder_target_tokens"])

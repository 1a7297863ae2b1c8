"""A LLaMA-family decoder through the same trainer and evaluator: packed isolation, train, resume, report."""

import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.data import packing
from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.evaluation import evaluator, report
from sft_jax.models import decoder
from sft_jax.train import checkpoints, loop
from sft_jax.train import metrics as train_metrics

TINY = decoder.DecoderOnlyModel(decoder.DecoderConfig(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32,
                                                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                                                      d_ff=64))
TRAIN = dict(mixture_or_task_name=synthetic.SMOKE_MIXTURE_NAME, model=TINY, batch_size=4, input_length=64,
             target_length=16, checkpoint_every=4, log_every=4)


def _logits(module, batch):
  return np.asarray(module(jnp.asarray(batch["decoder_input_tokens"]), jnp.asarray(batch["decoder_segment_ids"]),
                           jnp.asarray(batch["decoder_positions"])))


def test_packed_neighbour_does_not_move_an_examples_logits():
  module = TINY.init(0)
  first = {"inputs": np.array([5, 6, 7, 1]), "targets": np.array([9, 10, 1])}
  neighbour = {"inputs": np.array([20, 21, 1]), "targets": np.array([22, 1])}
  other = {"inputs": np.array([30, 31, 32, 1]), "targets": np.array([35, 36, 37, 1])}

  def packed(*examples):
    return next(packing.BestFitPacker(iter(examples), 1, None, 16, buffer_size=1))  # stream order

  with_a, with_b = packed(first, neighbour), packed(first, other)
  assert with_a["decoder_segment_ids"].max() == with_b["decoder_segment_ids"].max() == 2
  mine = with_a["decoder_segment_ids"][0] == 1
  np.testing.assert_array_equal(mine, with_b["decoder_segment_ids"][0] == 1)
  logits_a, logits_b = _logits(module, with_a)[0], _logits(module, with_b)[0]
  np.testing.assert_allclose(logits_a[mine], logits_b[mine], atol=1e-6, rtol=1e-6)
  # ... and equal those of the example alone in the evaluator's row for it.
  alone = packing.pad_unpacked_decoder([first], 8, 8)
  np.testing.assert_allclose(logits_a[mine], _logits(module, alone)[0][:mine.sum()], atol=1e-5, rtol=1e-5)
  # Decoding from the evaluator's prompt row continues as the full row predicts, token by token.
  prompt = packing.pad_unpacked_decoder([first], 8, 8, prompt_only=True)
  decoded = np.asarray(TINY.predict_batch(module, jax.tree.map(jnp.asarray, prompt), 3))[0]
  forced = packing.pad_unpacked_decoder([{"inputs": first["inputs"], "targets": decoded}], 8, 8)
  n, k = len(first["inputs"]), (list(decoded) + [1]).index(1) + 1  # up to EOS (0 after it)
  np.testing.assert_array_equal(_logits(module, forced)[0][n:n + min(k, 3)].argmax(-1), decoded[:min(k, 3)])
  # The loss (and its target-token count) of a row is the sum over its examples.
  loss_ab, n_ab, _ = TINY.loss_fn(module, jax.tree.map(jnp.asarray, with_a))
  loss_a, n_a, _ = TINY.loss_fn(module, jax.tree.map(jnp.asarray, packed(first)))
  loss_n, n_n, _ = TINY.loss_fn(module, jax.tree.map(jnp.asarray, packed(neighbour)))
  assert float(n_ab) == float(n_a) + float(n_n) == 3 + 2
  np.testing.assert_allclose(float(loss_ab), float(loss_a) + float(loss_n), rtol=1e-5)


@pytest.fixture
def short_warmup():
  """A few steps must move the loss: warm up in one step at a higher peak."""
  with gin.unlock_config():
    gin.bind_parameter("learning_rate_schedule.warmup_steps", 1)
    gin.bind_parameter("learning_rate_schedule.peak", 3e-3)
  yield
  gin.clear_config()


@pytest.mark.slow
def test_decoder_trains_resumes_exactly_and_is_evaluated(tmp_path, short_warmup):
  straight_dir = str(tmp_path / "straight")
  straight = loop.train(model_dir=straight_dir, train_steps=8, **TRAIN)
  logged = train_metrics.read_metrics(straight_dir)
  # Mean loss of steps 5-8 against steps 1-4 (about 7.6 from scratch): a trainer that does not
  # update, or updates the wrong way, stays within noise (a few hundredths) of it.
  assert logged["loss"][8] < logged["loss"][4] - 0.2, logged["loss"]
  # Decoder-only rows: prompt and targets share input_length + target_length slots, mostly filled.
  assert 0.0 <= logged["padding_fraction"][8] < 0.3 and logged["tokens_per_second"][8] > 0

  crashed_dir = str(tmp_path / "crashed")
  shutil.copytree(straight_dir, crashed_dir)
  shutil.rmtree(os.path.join(crashed_dir, "checkpoints", "8"))
  resumed = loop.train(model_dir=crashed_dir, train_steps=8, **TRAIN)
  assert int(resumed.step) == 8
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  result = evaluator.evaluate_heldout(model_dir=straight_dir, mixture_name=synthetic.SMOKE_MIXTURE_NAME, model=TINY,
                                      max_examples_per_task=2, batch_size=32, input_length=64, target_length=8)
  on_disk = json.load(open(os.path.join(straight_dir, "eval", "report.json")))
  report.validate_report(on_disk)
  assert on_disk["step"] == 8 and on_disk["baseline"]["step"] == 0
  assert set(on_disk["tasks"]) == set(result["tasks"]) and checkpoints.Checkpointer(straight_dir).all_steps()

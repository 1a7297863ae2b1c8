"""End to end on a tiny model: train, crash, resume exactly, evaluate, report."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.evaluation import evaluator, metrics, report
from sft_jax.models import hf_io
from sft_jax.models import t5
from sft_jax.train import checkpoints, loop
from sft_jax.train import metrics as train_metrics

TINY = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                          head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))
TRAIN = dict(mixture_or_task_name=synthetic.SMOKE_MIXTURE_NAME, model=TINY, batch_size=4, input_length=128,
             target_length=32, checkpoint_every=3, log_every=3)


def _truncate_array_files(checkpoint_dir: str) -> None:
  """Cuts every array data file of a checkpoint to half its size (a write that never finished)."""
  cut = 0
  for root, _, files in os.walk(checkpoint_dir):
    if os.path.basename(root) == "d":
      for name in files:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        cut += 1
  assert cut


@pytest.mark.slow
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, capsys):
  straight_dir = str(tmp_path / "straight")
  # Evaluated during training with the settings of the held-out evaluation at the end.
  periodic = evaluator.PeriodicEvaluator(synthetic.SMOKE_MIXTURE_NAME, every=3, max_examples_per_task=2, batch_size=64,
                                         input_length=128, target_length=8)
  straight = loop.train(model_dir=straight_dir, train_steps=6, periodic_eval=periodic, **TRAIN)
  assert checkpoints.Checkpointer(straight_dir).all_steps() == [3, 6]
  logged = train_metrics.read_metrics(straight_dir)
  assert sorted(logged["loss"]) == [3, 6] and sorted(logged["eval/heldout_mean"]) == [3, 6]
  heldout = logged["eval/heldout_mean"]
  best = checkpoints.Checkpointer(straight_dir, best_metric="eval/heldout_mean")
  assert best.best_step() == max(heldout, key=lambda s: (heldout[s], s))  # a tie goes to the later step

  # A run killed after its step-3 checkpoint: only that checkpoint is on disk.
  crashed_dir = str(tmp_path / "crashed")
  shutil.copytree(straight_dir, crashed_dir)
  shutil.rmtree(os.path.join(crashed_dir, "checkpoints", "6"))
  resumed = loop.train(model_dir=crashed_dir, train_steps=6, **TRAIN)

  assert int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # A new run initialized from this one starts at step 0 with its parameters and a fresh optimizer.
  started = loop.train(model_dir=str(tmp_path / "finetune"), train_steps=0, init_checkpoint=straight_dir, **TRAIN)
  assert int(started.step) == 0
  assert f"training from {straight_dir}" in capsys.readouterr().out
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(started.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(not np.any(np.asarray(m)) for m in jax.tree.leaves(started.opt_state) if np.ndim(m) > 1)

  # A latest checkpoint whose array files were cut short is skipped for the one before it.
  damaged_dir = str(tmp_path / "damaged")
  shutil.copytree(straight_dir, damaged_dir)
  _truncate_array_files(os.path.join(damaged_dir, "checkpoints", "6"))
  recovered = loop.train(model_dir=damaged_dir, train_steps=6, **TRAIN)
  out = capsys.readouterr().out
  assert "checkpoint step 6" in out and "cannot be read" in out
  assert "resuming from checkpoint at step 3" in out
  assert os.path.isdir(os.path.join(damaged_dir, "unreadable_checkpoints", "6"))  # kept, not deleted
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(recovered.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The held-out evaluation of the run writes a valid report with its step-0 baseline.
  result = evaluator.evaluate_heldout(model_dir=straight_dir, mixture_name=synthetic.SMOKE_MIXTURE_NAME, model=TINY,
                                      max_examples_per_task=2, batch_size=64, input_length=128,
                                      target_length=8)
  on_disk = json.load(open(os.path.join(straight_dir, "eval", "report.json")))
  report.validate_report(on_disk)
  assert on_disk["step"] == 6 and on_disk["baseline"]["step"] == 0
  assert set(on_disk["tasks"]) == set(result["tasks"])
  # The in-training scores of the final state are the evaluator's scores of its checkpoint.
  assert logged["eval/seen_mean"][6] == pytest.approx(result["seen_mean"], abs=1e-6)
  assert logged["eval/heldout_mean"][6] == pytest.approx(result["heldout_mean"], abs=1e-6)
  for name, scores in result["tasks"].items():
    assert logged[f"eval/task/{name}"][6] == pytest.approx(metrics.primary_metric(scores), abs=1e-6)
  assert os.path.getsize(os.path.join(straight_dir, "eval", "report.png")) > 1000
  # Its learning curve: the evaluated baseline and step 6, and the logged periodic evaluations.
  rows = {(row["step"], row["source"]): row for row in on_disk["learning_curve"]}
  assert sorted(rows) == [(0, "evaluated"), (3, "periodic"), (6, "evaluated"), (6, "periodic")]
  for step in (3, 6):
    assert rows[step, "periodic"]["heldout_mean"] == pytest.approx(logged["eval/heldout_mean"][step])
    assert rows[step, "periodic"]["train_loss"] == pytest.approx(logged["loss"][step])
  assert rows[6, "evaluated"]["seen_mean"] == pytest.approx(result["seen_mean"])

  # The run keeps its mixture's tokenizer where tools that read a model directory look for it
  # (hf_io.restore_checkpoint_dir: tools/score.py, the lm-eval adapter, export to Hugging Face).
  assert os.listdir(os.path.join(straight_dir, "hf")) == ["spiece.model"]
  kept = hf_io.load_vocabulary(os.path.join(straight_dir, "hf"))
  text = "Reverse the list: a, b"
  assert kept.encode(text) == synthetic_vocab.vocabulary().encode(text)

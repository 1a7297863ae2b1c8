"""benchmarks/dpo_pairs.py: its three accuracies equal ones recomputed from tools/score.py's log-likelihoods."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.models import hf_t5, t5
from sft_jax.train import loop

_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                          head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))


def _load(relative_path):
  path = _ROOT / relative_path
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(model_dir, steps, seed):
  loop.train(model_dir=str(model_dir), mixture_or_task_name=synthetic.MIXTURE_NAME, model=TINY, train_steps=steps,
             batch_size=8, checkpoint_every=steps, log_every=steps, input_length=96, target_length=16, seed=seed)
  # The model bindings a gin-configured run (tools/train.py) leaves in its config.gin, for loading it back.
  (model_dir / "config.gin").write_text("\n".join(hf_t5.model_gin(TINY)) + "\n")
  return str(model_dir)


# Two tiny training runs and four scoring passes over 84 pairs (about a minute on 2 cores).
@pytest.mark.slow
def test_accuracies_equal_tools_score_logliks(tmp_path, capsys):
  reference = _run(tmp_path / "reference", 3, seed=0)
  policy = _run(tmp_path / "policy", 6, seed=1)
  benchmark, score = _load("benchmarks/dpo_pairs.py"), _load("tools/score.py")
  out = benchmark.main([f"--policy={policy}", f"--reference={reference}", "--pairs_per_task=2"])
  printed = capsys.readouterr().out.strip().splitlines()
  assert json.loads(printed[-1]) == out

  pairs = benchmark.pairs_from_test_split(2)
  assert out["pairs"] == len(pairs) == 2 * out["tasks"] and out["tasks"] >= 40
  loglik = {}
  for name, model_dir in (("ref", reference), ("pol", policy)):
    for side in ("chosen", "rejected"):
      lines = tmp_path / f"{name}_{side}.jsonl"
      lines.write_text("".join(json.dumps({"inputs": p["inputs"], "targets": p[side]}) + "\n" for p in pairs))
      score.main([f"--checkpoint={model_dir}", f"--inputs={lines}", f"--out={lines}.out"])
      loglik[name, side] = np.array([json.loads(line)["loglik"] for line in open(f"{lines}.out")])
  margins = {
      "reference_ranks_chosen": loglik["ref", "chosen"] - loglik["ref", "rejected"],
      "policy_ranks_chosen": loglik["pol", "chosen"] - loglik["pol", "rejected"],
      "reward_accuracy": (loglik["pol", "chosen"] - loglik["ref", "chosen"])
                         - (loglik["pol", "rejected"] - loglik["ref", "rejected"]),
  }
  for key, margin in margins.items():
    # Batches of other shapes may round a near-tie the other way; nothing else may differ.
    near_ties = np.mean(np.abs(margin) < 1e-4)
    assert abs(out[key] - np.mean(margin > 0)) <= near_ties + 1e-9, key
  assert out["ratio"] == pytest.approx(out["policy_ranks_chosen"] / out["reference_ranks_chosen"])
  # The table has a row per task and the overall row.
  assert sum(line.startswith(tuple(p["task"] for p in pairs)) for line in printed) == out["tasks"]

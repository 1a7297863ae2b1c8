"""benchmarks/train_step.py runs end to end at toy sizes: table, sft_jax vs torch, last line JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _ROOT / "benchmarks" / "train_step.py"


# A whole run: three tf.data pipelines, two XLA compiles of the step and a torch model (about a minute).
@pytest.mark.slow
def test_tiny_run_prints_table_and_json_with_torch_comparison():
  result = subprocess.run(
      [sys.executable, str(_SCRIPT), "--gin_file=gin_configs/runs/quickstart.gin", "--steps=1", "--rounds=2",
       "--gin.train.batch_size=4", "--gin.train.input_length=32", "--gin.train.target_length=8"],
      cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  for key in ("sft_jax_tokens_per_s", "torch_tokens_per_s", "ratio"):
    assert out[key] > 0, (key, out[key])
  assert out["ratio"] == pytest.approx(out["sft_jax_tokens_per_s"] / out["torch_tokens_per_s"], rel=1e-9)
  versus = out["torch_comparison"]
  assert versus["params"] == versus["torch_params"]
  assert len(versus["sft_jax"]["seconds_per_step_rounds"]) == len(versus["torch"]["seconds_per_step_rounds"]) == 2
  first = versus["first_step"]
  assert first["sft_jax"]["loss"] == pytest.approx(first["torch"]["loss"], rel=1e-3)
  gradients = out["kernel_gradients"]
  assert gradients["ratio"] == pytest.approx(gradients["contract"]["real_tokens_per_second"]
                                             / gradients["autodiff"]["real_tokens_per_second"], rel=1e-9)
  assert len(gradients["contract"]["seconds_per_step_rounds"]) == 2
  # The existing rows are still there, and the table precedes the JSON line.
  assert {"packed", "unpacked", "best_fit_examples_per_batch", "seqio_next_fit_examples_per_batch"} <= set(out)
  table = "\n".join(lines[:-1])
  for label in ("packed (best-fit)", "unpacked (padded)", "sft_jax (jit)", "transformers+torch",
                "sft_jax / torch target tokens per second", "seqio next-fit",
                "contract / autodiff tokens per second"):
    assert label in table

"""benchmarks/decode.py --smoke runs end to end: tables, sft_jax vs transformers, last line JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _ROOT / "benchmarks" / "decode.py"


# A subprocess that imports torch, transformers and JAX, compiles one decode and one scoring function and
# loads the synthetic evaluation tasks (about 70 s).
@pytest.mark.slow
def test_smoke_run_prints_table_and_json():
  result = subprocess.run([sys.executable, str(_SCRIPT), "--smoke"], cwd=_ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  for key in ("sft_jax_tokens_per_s", "hf_tokens_per_s", "ratio", "rank_examples_per_s", "hf_rank_examples_per_s",
              "rank_ratio"):
    assert out[key] > 0, (key, out[key])
  assert out["ratio"] == pytest.approx(out["sft_jax_tokens_per_s"] / out["hf_tokens_per_s"], rel=1e-9)
  assert out["rank_ratio"] == pytest.approx(out["rank_examples_per_s"] / out["hf_rank_examples_per_s"], rel=1e-9)
  generation = out["generation"]
  # The same weights decode the same tokens in both systems.
  assert out["rows_equal"] == generation["batch_size"] == 2
  assert generation["sft_jax"]["generated_tokens_per_call"] == generation["hf"]["generated_tokens_per_call"]
  # The same weights pick the same answer choice for every example in both systems.
  rank = out["rank_classification"]
  assert out["rank_agreement"] == 1.0
  assert rank["examples"] == rank["tasks"] * rank["examples_per_task"] > 0
  assert rank["max_abs_loglik_diff"] < 1e-3
  table = "\n".join(lines[:-1])
  for label in ("sft_jax (jit)", "transformers generate", "sft_jax / transformers generated tokens per second",
                "rank classification examples/s", "sft_jax rank_choices", "transformers forward",
                "sft_jax / transformers rank classification examples per second"):
    assert label in table

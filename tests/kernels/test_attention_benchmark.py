"""benchmarks/attention.py runs on CPU (--cpu_smoke) and reports every cell it can measure."""

import importlib.util
import json
import pathlib

import jax
import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "attention.py"


@pytest.mark.slow
def test_cpu_smoke_run_prints_table_and_json(capsys):
  spec = importlib.util.spec_from_file_location("attention_benchmark", _SCRIPT)
  benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(benchmark)
  results = benchmark.main(["--cpu_smoke", "--seq_lens=64"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert json.loads(lines[-1])["results"] == results
  assert len(results) == len(benchmark.CASES) * len(benchmark.IMPLS)
  for row in results:
    if row["impl"] == "jax_cudnn" and jax.default_backend() != "gpu":
      assert row["error"] == "needs a GPU"
      continue
    assert "error" not in row, row
    assert row["fwd_tflops"] > 0 and row["fwd_bwd_tflops"] > 0, row
    assert 0 < row["fwd_peak_bytes"] <= row["fwd_bwd_peak_bytes"], row
  assert any(f"{row['case']:<15}" in line for row in results for line in lines[:-1])

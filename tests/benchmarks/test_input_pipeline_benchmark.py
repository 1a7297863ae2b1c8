"""benchmarks/input_pipeline.py at toy sizes: both variants measured, table, then JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

from sft_jax.data.collections import synthetic

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _ROOT / "benchmarks" / "input_pipeline.py"


def test_tiny_run_prints_table_and_json():
  result = subprocess.run(
      [sys.executable, str(_SCRIPT), f"--mixture={synthetic.SMOKE_MIXTURE_NAME}", "--batch_size=4",
       "--input_length=64", "--target_length=16", "--batches=3", "--rounds=2"],
      cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  for variant in ("as_registered", "shuffle_buffer"):
    assert out[variant]["cpu_ms_per_example"] > 0
  assert len(out["runs"]["as registered"]) == len(out["runs"]["shuffle buffer"]) == 2
  ratio = out["ratio"]["first_batch_cpu_s"]
  assert ratio == pytest.approx(out["shuffle_buffer"]["first_batch_cpu_s"] / out["as_registered"]["first_batch_cpu_s"])
  # Four tasks' 1,000-example buffers are generated and tokenized before the first batch.
  assert ratio > 1
  assert any("first batch wall s" in line for line in lines[:-1])

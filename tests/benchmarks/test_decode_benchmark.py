"""benchmarks/decode.py --smoke runs end to end: table, sft_jax vs transformers, last line JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _ROOT / "benchmarks" / "decode.py"


# A subprocess that imports torch, transformers and JAX and compiles one decode (about 30 s).
@pytest.mark.slow
def test_smoke_run_prints_table_and_json():
  result = subprocess.run([sys.executable, str(_SCRIPT), "--smoke"], cwd=_ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  for key in ("sft_jax_tokens_per_s", "hf_tokens_per_s", "ratio"):
    assert out[key] > 0, (key, out[key])
  assert out["ratio"] == pytest.approx(out["sft_jax_tokens_per_s"] / out["hf_tokens_per_s"], rel=1e-9)
  generation = out["generation"]
  # The same weights decode the same tokens in both systems.
  assert out["rows_equal"] == generation["batch_size"] == 2
  assert generation["sft_jax"]["generated_tokens_per_call"] == generation["hf"]["generated_tokens_per_call"]
  table = "\n".join(lines[:-1])
  for label in ("sft_jax (jit)", "transformers generate", "sft_jax / transformers generated tokens per second"):
    assert label in table

"""benchmarks/cpu_devices.py at toy sizes: 1 and 2 CPU devices train the same run; table, then JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

from sft_jax.data.collections import synthetic

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _ROOT / "benchmarks" / "cpu_devices.py"
_TINY = {"d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64, "num_encoder_layers": 1,
         "num_decoder_layers": 1}


# Two tools/train.py runs (a process start, a compile and a few steps each: about a minute).
@pytest.mark.slow
def test_tiny_run_trains_the_same_on_both_device_counts():
  flags = [f"--gin.t5.T5Config.{k}={v}" for k, v in _TINY.items()] + [
      f"--gin.MIXTURE_OR_TASK_NAME='{synthetic.SMOKE_MIXTURE_NAME}'", "--gin.train.batch_size=8",
      "--gin.train.input_length=48", "--gin.train.target_length=16", "--gin.train.log_every=2"]
  result = subprocess.run([sys.executable, str(_SCRIPT), "--steps=6", "--skip=2", "--rounds=1", *flags],
                          cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  one, two = out["runs"]["1"], out["runs"]["2"]
  assert out["ratio"] == pytest.approx(two["median_tokens_per_second"] / one["median_tokens_per_second"], rel=1e-9)
  # Same batches, same initial parameters: the split batch gives the same training, up to summation order.
  assert one["rounds"][0]["last_step"] == two["rounds"][0]["last_step"] == 6
  assert two["rounds"][0]["loss"] == pytest.approx(one["rounds"][0]["loss"], rel=1e-4)
  assert "2 / 1 devices tokens per second" in "\n".join(lines[:-1])

"""distributed.initialize: splitting a CPU process into several JAX devices."""

import os
import subprocess
import sys

import pytest

from sft_jax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_devices_splits_the_process_into_that_many_devices():
  # A fresh process: the setting must precede the CPU backend's start.
  code = ("from sft_jax.train import distributed, partitioning\n"
          "assert distributed.initialize(cpu_devices=3) is False\n"
          "import jax\n"
          "print(jax.device_count(), jax.devices()[0].platform, dict(partitioning.create_mesh().shape))\n")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split("\n")[0] == "3 cpu {'data': 3, 'fsdp': 1, 'tensor': 1}"


def test_cpu_devices_must_be_positive():
  with pytest.raises(ValueError, match=r"distributed.initialize.cpu_devices=0"):
    distributed.initialize(cpu_devices=0)

"""Two real processes (jax.distributed on 127.0.0.1, 4 CPU devices each) train like one with 8.

Both runs go through tools/train.py on the synthetic mixture with a (2, 2, 2) mesh (the two-process
one built as a hybrid mesh, one host per data group) and two data shards, so the global batches
are the same whatever the number of processes; the per-step losses (metrics.jsonl) and the step-5
checkpoints must agree.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.models import t5
from sft_jax.train import checkpoints, partitioning
from sft_jax.train import metrics as train_metrics
from sft_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 5
MODEL_BINDINGS = dict(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                      num_encoder_layers=1, num_decoder_layers=1)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_command(model_dir: str, *mesh_flags: str) -> list[str]:
  flags = ["--gin_file=models/t5_tiny.gin", "--gin_file=mixtures/synthetic.gin", "--gin_file=runs/train.gin",
           f"--gin.MIXTURE_OR_TASK_NAME='{synthetic.SMOKE_MIXTURE_NAME}'",
           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={STEPS}", "--gin.train.batch_size=8",
           "--gin.train.input_length=64", "--gin.train.target_length=16", f"--gin.train.checkpoint_every={STEPS}",
           "--gin.train.log_every=1", "--gin.train.data_shards=2", "--gin.train.input_autotune=False",
           "--gin.create_mesh.data=2", "--gin.create_mesh.fsdp=2", "--gin.create_mesh.tensor=2",
           "--gin.learning_rate_schedule.warmup_steps=1", "--gin.learning_rate_schedule.peak=1e-2", *mesh_flags]
  flags += [f"--gin.t5.T5Config.{k}={v}" for k, v in MODEL_BINDINGS.items()]
  return [sys.executable, os.path.join(REPO, "tools", "train.py")] + flags


def _env(devices: int, **extra: str) -> dict:
  return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _params(model_dir: str):
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  model = t5.EncoderDecoderModel(t5.T5Config(**MODEL_BINDINGS))
  checkpointer = checkpoints.Checkpointer(model_dir)
  try:
    _, params = state_lib.restore_params(checkpointer, STEPS, model, 0, mesh, partitioning.DEFAULT_RULES)
  finally:
    checkpointer.close()
  return {"/".join(map(str, path)): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices(tmp_path):
  single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
  address = f"127.0.0.1:{_free_port()}"
  # Across the two processes the data axis is split as a multi-node GPU cluster would split it:
  # hosts over the slow network (granule "process"), the rest of the mesh within each host.
  hybrid = ("--gin.create_mesh.dcn_data=2", "--gin.create_mesh.granule='process'")
  workers = [subprocess.Popen(_train_command(multi_dir, *hybrid), cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)))
             for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  single = subprocess.run(_train_command(single_dir), cwd=str(tmp_path), capture_output=True, text=True,
                          env=_env(8), timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  # One runtime of 8 devices; process 0 alone reports; both wrote their parts of one checkpoint.
  for i, out in enumerate(outputs):
    assert f"process {i} of 2: 4 local devices of 8" in out, out[-3000:]
  assert ("training from scratch" in outputs[0]) and ("training from scratch" not in outputs[1])
  assert checkpoints.Checkpointer(multi_dir).all_steps() == [STEPS]
  want, got = train_metrics.read_metrics(single_dir)["loss"], train_metrics.read_metrics(multi_dir)["loss"]
  assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
  assert want[STEPS] < want[1]  # it trains
  want_params, got_params = _params(single_dir), _params(multi_dir)
  assert want_params.keys() == got_params.keys()
  for name, value in want_params.items():
    np.testing.assert_allclose(got_params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)

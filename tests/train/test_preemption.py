"""Real signals on a real training process: SIGTERM saves and exits 0, SIGKILL loses nothing saved.

A child process trains a tiny model; the test signals it once its first checkpoint is on disk,
then resumes in this process and compares with an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.models import t5
from sft_jax.train import checkpoints, loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = dict(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                   num_encoder_layers=1, num_decoder_layers=1)
TRAIN = dict(mixture_or_task_name=synthetic.SMOKE_MIXTURE_NAME, batch_size=4, input_length=128, target_length=32,
             checkpoint_every=2, log_every=2)
CHILD = """
import sys
from sft_jax.data.collections import synthetic
from sft_jax.models import t5
from sft_jax.train import loop
loop.train(model_dir=sys.argv[1], train_steps=10_000, model=t5.EncoderDecoderModel(t5.T5Config(**{config})),
           **{train})
"""


def _start_child(model_dir: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  code = CHILD.format(config=TINY_CONFIG, train=TRAIN)
  return subprocess.Popen([sys.executable, "-c", code, model_dir], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(child: subprocess.Popen, model_dir: str, timeout_s: float = 240) -> None:
  deadline = time.monotonic() + timeout_s
  directory = os.path.join(model_dir, "checkpoints")
  while not (os.path.isdir(directory) and checkpoints.Checkpointer(model_dir).latest_step()):
    assert child.poll() is None, child.stdout.read()
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.2)


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _model():
  return t5.EncoderDecoderModel(t5.T5Config(**TINY_CONFIG))


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero_then_resume_is_exact(tmp_path, capsys):
  model_dir = str(tmp_path / "preempted")
  child = _start_child(model_dir)
  _wait_for_checkpoint(child, model_dir)
  child.send_signal(signal.SIGTERM)
  output, _ = child.communicate(timeout=120)
  assert child.returncode == 0, output
  assert "SIGTERM: saved a checkpoint at step" in output
  saved = checkpoints.Checkpointer(model_dir).latest_step()
  assert f"SIGTERM: saved a checkpoint at step {saved};" in output

  end = saved + 2
  resumed = loop.train(model_dir=model_dir, train_steps=end, model=_model(), **TRAIN)
  assert f"resuming from checkpoint at step {saved}" in capsys.readouterr().out
  straight = loop.train(model_dir=str(tmp_path / "straight"), train_steps=end, model=_model(), **TRAIN)
  _assert_same_params(straight, resumed)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_the_uninterrupted_run(tmp_path):
  model_dir = str(tmp_path / "killed")
  child = _start_child(model_dir)
  _wait_for_checkpoint(child, model_dir)
  child.kill()
  child.communicate(timeout=60)
  assert child.returncode == -signal.SIGKILL
  saved = checkpoints.Checkpointer(model_dir).latest_step()
  assert saved and saved % TRAIN["checkpoint_every"] == 0

  end = saved + 3  # past the next checkpoint, which the killed run may have started writing
  resumed = loop.train(model_dir=model_dir, train_steps=end, model=_model(), **TRAIN)
  straight = loop.train(model_dir=str(tmp_path / "straight"), train_steps=end, model=_model(), **TRAIN)
  _assert_same_params(straight, resumed)

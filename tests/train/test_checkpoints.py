"""Checkpoints: exact save/restore of the train state and the data position."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sft_jax.train import checkpoints, optimizers, partitioning
from sft_jax.train import state as state_lib
from sft_jax.train.step import TrainState


class _Toy(nnx.Module):
  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 8)), out_sharding=("embed", "mlp"))
    self.b = nnx.Param(jnp.zeros((8,)), out_sharding=("mlp",))
    self.proj = nnx.Dict(kernel=nnx.Param(jax.random.normal(rngs.params(), (8, 4)), out_sharding=("mlp", "embed")))


class _ToyModel:
  def init(self, seed):
    return _Toy(nnx.Rngs(seed))


def _state(seed, mesh, optimizer=optax.adam(1e-3)):
  return state_lib.init_train_state(_ToyModel(), optimizer, seed, mesh, partitioning.logical_axis_rules())[1]


# Muon partitions the parameters between itself and Adam: its state holds empty MaskedNodes.
@pytest.mark.parametrize("optimizer", [optax.adam(1e-3), optimizers.create_optimizer(lambda step: 1e-3, name="muon")],
                         ids=["adam", "muon"])
def test_save_restore_roundtrip_is_exact(tmp_path, optimizer):
  mesh = partitioning.create_mesh()
  state = _state(0, mesh, optimizer)
  # Make the optimizer state non-trivial and the step non-zero.
  grads = jax.tree.map(jnp.ones_like, state.params)
  _, opt_state = optimizer.update(grads, state.opt_state, state.params)
  state = TrainState(step=jnp.asarray(7, jnp.int32), params=state.params, opt_state=opt_state)
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  state_lib.save_train_state(ckpt, state, {"batches_emitted": 7, "seed": 0})
  ckpt.wait()
  assert ckpt.latest_step() == 7

  other = _state(1, mesh, optimizer)  # different values, same structure: restore must overwrite them all
  restored, data_state = state_lib.restore_train_state(ckpt, 7, like=other)
  assert data_state == {"batches_emitted": 7, "seed": 0, "step": 7}
  # The trainer reads the data position first, to start its input before building the model.
  assert ckpt.restore_data_state(7) == data_state
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  graphdef, params = state_lib.restore_params(ckpt, 7, _ToyModel(), 0, mesh, partitioning.logical_axis_rules())
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ckpt.close()


def test_incomplete_save_is_never_the_latest(tmp_path):
  mesh = partitioning.create_mesh()
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  state_lib.save_train_state(ckpt, _state(0, mesh), {"batches_emitted": 0})
  ckpt.close()
  # What a process killed in the middle of a save leaves behind: a temporary directory.
  os.makedirs(os.path.join(ckpt.directory, "5.orbax-checkpoint-tmp-1234", "params"))
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 0


def test_keeps_the_last_checkpoints_and_the_best_by_metric(tmp_path):
  mesh = partitioning.create_mesh()
  state = _state(0, mesh)
  scores = {1: 0.1, 2: 0.5, 3: None, 4: 0.3, 5: 0.2, 6: 0.25, 7: None}
  kept = {}
  for mode, best in (("max", 2), ("min", 1)):
    ckpt = checkpoints.Checkpointer(str(tmp_path / mode), max_to_keep=2, async_save=False,
                                    best_metric="eval/heldout_mean", best_mode=mode)
    for step, score in scores.items():
      state = TrainState(step=jnp.asarray(step, jnp.int32), params=state.params, opt_state=state.opt_state)
      metrics = None if score is None else {"eval/heldout_mean": score, "eval/seen_mean": 1.0 - score}
      state_lib.save_train_state(ckpt, state, {"batches_emitted": step}, metrics=metrics)
    ckpt.wait()
    assert ckpt.best_step() == best
    kept[mode] = ckpt.all_steps()
    ckpt.close()
  # The two newest (resume points) and the best one; older evaluated states are deleted.
  assert kept == {"max": [2, 6, 7], "min": [1, 6, 7]}
  plain = checkpoints.Checkpointer(str(tmp_path / "plain"), max_to_keep=2, async_save=False)
  assert plain.best_step() is None

"""The training loop: mesh, input, model, sharded step, checkpoints, logs.

Read top to bottom; `train` is what `tools/train.py` calls with gin bindings.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import gin
import jax
import numpy as np

from sft_jax.data import mixtures, packing, pipeline
from sft_jax.train import checkpoints, optimizers, partitioning
from sft_jax.train import metrics as train_metrics
from sft_jax.train import state as state_lib
from sft_jax.train.step import StepConfig, TrainState, train_step


def _write_operative_config(model_dir: str) -> None:
  """Saves the bindings the run actually used next to its checkpoints (process 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())


@gin.configurable
def train(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          model: Any = gin.REQUIRED, batch_size: int = 16, input_length: int = 512,
          target_length: int = 128, seed: int = 0, checkpoint_every: int = 200,
          keep_checkpoints: int = 3, log_every: int = 25, label_smoothing: float = 0.0,
          z_loss: float = 1e-4, loss_normalization: str = "tokens", num_microbatches: int = 1,
          input_autotune: bool = True, input_prefetch: int = 2) -> TrainState:
  """Trains `model` on a seqio mixture, resuming from the latest checkpoint in `model_dir`."""
  os.makedirs(model_dir, exist_ok=True)

  # ---- Mesh ---------------------------------------------------------------
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  logging.info("mesh %s", dict(mesh.shape))

  # ---- Refuse bad configurations before anything is written ---------------------
  mixtures.check_no_heldout_in_training(mixture_or_task_name)
  if batch_size % num_microbatches:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by train.num_microbatches={num_microbatches}")
  if hasattr(model, "config"):
    pipeline.check_vocab_fits(mixture_or_task_name, model.config.vocab_size)

  # ---- Checkpoint: resume if one exists --------------------------------------
  checkpointer = checkpoints.Checkpointer(model_dir, max_to_keep=keep_checkpoints)
  start_step = checkpointer.latest_step() or 0

  # ---- Input: produced in a background thread from here on, so building the
  # datasets and filling the packer overlap with model creation and compilation.
  train_input = pipeline.TrainInput(
      pipeline.InputConfig(mixture_or_task_name, batch_size, input_length, target_length, seed=seed,
                           autotune=input_autotune),
      process_index=jax.process_index(), process_count=jax.process_count(), prefetch=input_prefetch,
      state=checkpointer.restore_data_state(start_step) if start_step else None)

  # ---- Model, optimizer, sharded state --------------------------------------
  schedule = optimizers.learning_rate_schedule(total_steps=train_steps)
  optimizer = optimizers.create_optimizer(schedule)
  graphdef, state = state_lib.init_train_state(model, optimizer, seed, mesh, rules)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  writer = train_metrics.MetricsWriter(model_dir, start_step, train_steps, enabled=jax.process_index() == 0)
  if start_step:
    state, _ = state_lib.restore_train_state(checkpointer, start_step, like=state)
    writer.message(f"resuming from checkpoint at step {start_step} in {checkpointer.directory}")
  else:
    writer.message(f"training from scratch: {n_params:,} parameters, mesh {dict(mesh.shape)}")

  # ---- Update step: jitted once, explicit shardings, state donated -------------
  state_shardings = state_lib.shardings_of(state)
  step_fn = jax.jit(
      functools.partial(train_step, StepConfig(graphdef, model, optimizer, schedule,
                                               label_smoothing=label_smoothing, z_loss=z_loss,
                                               loss_normalization=loss_normalization,
                                               num_microbatches=num_microbatches,
                                               dropout_seed=seed)),
      in_shardings=(state_shardings, partitioning.batch_sharding(mesh)),
      out_shardings=(state_shardings, None),
      donate_argnums=0,
  )

  # ---- Loop -----------------------------------------------------------------
  try:
    pending, host = [], {"tokens": 0.0, "slots": 0.0, "examples": 0.0}
    last_log_time = time.perf_counter()
    step = start_step
    while step < train_steps:
      local_batch = next(train_input)
      for k, v in packing.batch_counts(local_batch).items():
        host[k] += v
      with state_lib.mesh_context(mesh, rules):
        state, step_metrics = step_fn(state, partitioning.global_batch(local_batch, mesh))
      pending.append(step_metrics)
      step += 1
      writer.advance()
      if step == start_step + 1:
        _write_operative_config(model_dir)

      if step % log_every == 0 or step == train_steps:
        fetched = jax.device_get(pending)  # the one host sync per logging interval
        loss = np.array([m["loss"] for m in fetched])
        if not np.all(np.isfinite(loss)):
          bad = step - len(loss) + int(np.argmin(np.isfinite(loss)))
          raise FloatingPointError(
              f"non-finite loss at step {bad}; the last good checkpoint is step "
              f"{checkpointer.latest_step()} in {checkpointer.directory}")
        elapsed = time.perf_counter() - last_log_time
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
        scalars.update(
            tokens_per_second=host["tokens"] * jax.process_count() / elapsed,
            examples_per_second=host["examples"] * jax.process_count() / elapsed,
            padding_fraction=1.0 - host["tokens"] / host["slots"],
            truncated_examples=float(train_input.counts.truncated),
            dropped_examples=float(train_input.counts.dropped))
        writer.write_scalars(step, scalars)
        pending, host = [], dict.fromkeys(host, 0.0)
        last_log_time = time.perf_counter()

      if step % checkpoint_every == 0 or step == train_steps:
        state_lib.save_train_state(checkpointer, state, train_input.get_state())
  finally:
    train_input.close()
  checkpointer.close()
  writer.message(f"done: step {step}, checkpoints {checkpointer.all_steps()} in {checkpointer.directory}")
  writer.close()
  return state

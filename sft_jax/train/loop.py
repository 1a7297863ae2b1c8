"""The training loop: mesh, input, model, sharded step, checkpoints, logs.

Read top to bottom; `train` is what `tools/train.py` calls with gin bindings.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import gin
import jax
import numpy as np
import seqio

from sft_jax.data import mixtures, packing, pipeline, preference
from sft_jax.models import hf_io
from sft_jax.train import checkpoints, dpo as dpo_lib, optimizers, partitioning
from sft_jax.train import metrics as train_metrics
from sft_jax.train import state as state_lib
from sft_jax.train.step import StepConfig, TrainState, train_step


def _write_run_files(model_dir: str, mixture_or_task_name: str) -> None:
  """Saves the bindings the run actually used next to its checkpoints, and the tokenizer files
  of its mixture in hf/, so what reads the run (tools/score.py, the lm-eval adapter, export to
  Hugging Face) finds its vocabulary there (process 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())
    features = seqio.get_mixture_or_task(mixture_or_task_name).output_features
    feature = features.get("targets") or next(iter(features.values()))  # preference tasks: chosen/rejected
    hf_io.write_vocabulary(feature.vocabulary, model_dir)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
  """An event set by SIGTERM (preemption) while the block runs; the old handler comes back after.

  Signal handlers can only be installed from the main thread; elsewhere the event never fires.
  On a multi-host slice every host receives the preemption notice, so every process saves the
  same step.
  """
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _restore_newest_readable(checkpointer: checkpoints.Checkpointer, like: TrainState,
                             say: Callable[[str], None]) -> tuple[TrainState, dict | None]:
  """The newest checkpoint that restores (skipping damaged ones with a warning), or `like` and None."""
  for step in reversed(checkpointer.all_steps()):
    try:
      state, data_state = state_lib.restore_train_state(checkpointer, step, like=like)
    except Exception as e:  # orbax raises many types for missing or truncated files
      moved = checkpointer.set_aside(step) if jax.process_index() == 0 else "(process 0 moves it)"
      say(f"warning: checkpoint step {step} in {checkpointer.directory} cannot be read "
          f"({type(e).__name__}: {str(e)[:200]}); moved to {moved}; trying the previous one")
      continue
    say(f"resuming from checkpoint at step {step} in {checkpointer.directory}")
    return state, data_state
  return like, None


def _latest_data_state(checkpointer: checkpoints.Checkpointer) -> dict | None:
  """The newest checkpoint's data position, or None (no checkpoint, or unreadable)."""
  step = checkpointer.latest_step()
  if step is None:
    return None
  try:
    return checkpointer.restore_data_state(step)
  except Exception:  # reported, with the fallback, once the train state is restored
    return None


def _check_finite(fetched_metrics: list[dict], step: int, checkpointer: checkpoints.Checkpointer) -> None:
  """Stops the run at the first step whose loss or gradient norm is NaN or infinite."""
  values = np.array([[m["loss"], m["grad_norm"]] for m in fetched_metrics]).reshape(-1, 2)
  finite = np.all(np.isfinite(values), axis=1)
  if not np.all(finite):
    bad = step - len(finite) + 1 + int(np.argmin(finite))
    raise FloatingPointError(
        f"non-finite loss or gradient at step {bad}; the last good checkpoint is step "
        f"{checkpointer.latest_step()} in {checkpointer.directory}")


@gin.configurable
def train(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          model: Any = gin.REQUIRED, batch_size: int = 16, input_length: int = 512,
          target_length: int = 128, seed: int = 0, checkpoint_every: int = 200,
          keep_checkpoints: int = 3, log_every: int = 25, label_smoothing: float = 0.0,
          z_loss: float = 1e-4, loss_normalization: str = "tokens", num_microbatches: int = 1,
          input_autotune: bool = True, input_prefetch: int = 2, data_shards: int = 0,
          init_checkpoint: str | None = None, periodic_eval: Any = None,
          dpo: dpo_lib.DPOConfig | None = None) -> TrainState:
  """Trains `model` on a seqio mixture, resuming from the latest checkpoint in `model_dir`.

  `input_length` and `target_length` are the prompt and target slots of a packed row: for an
  encoder-decoder model the two sides' lengths, for a decoder-only model (`model.feature_layout`)
  one row of their sum, where an over-long prompt keeps at least its last `input_length` tokens.
  A run with no checkpoint of its own starts from `init_checkpoint`'s parameters when given
  (e.g. a directory written by tools/convert_hf.py), else from a fresh initialization.
  On several hosts every process runs this same function (after `distributed.initialize`),
  reads its own shards of the mixture and writes its part of each checkpoint.

  `periodic_eval` (e.g. `evaluation.evaluator.PeriodicEvaluator`) scores the live parameters
  when its `due(step, train_steps)` says so; its scalars go to TensorBoard and into a checkpoint
  saved at that step, which is kept while it is the best by `periodic_eval.best_metric`.

  With `dpo` (a `train.dpo.DPOConfig`) the run optimizes the preference loss on a mixture of
  preference tasks (rows of prompt, chosen, rejected) instead of the SFT loss. The reference
  model is where the run starts: `init_checkpoint`'s parameters, held frozen beside the policy,
  or under LoRA the frozen base itself (the adapters zeroed), so no copy of it is made.
  """
  os.makedirs(model_dir, exist_ok=True)

  # ---- Mesh ---------------------------------------------------------------
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  logging.info("mesh %s", dict(mesh.shape))

  # ---- Refuse bad configurations before anything is written ---------------------
  # Also against the suite this run is evaluated on, when that is another mixture's split.
  eval_mixtures = [periodic_eval.mixture_name] if getattr(periodic_eval, "mixture_name", None) else []
  mixtures.check_no_heldout_in_training(mixture_or_task_name, eval_mixtures=eval_mixtures)
  if batch_size % num_microbatches:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by train.num_microbatches={num_microbatches}")
  if hasattr(model, "config"):
    pipeline.check_vocab_fits(mixture_or_task_name, model.config.vocab_size)

  # ---- Checkpoint: resume if one exists --------------------------------------
  best_metric = getattr(periodic_eval, "best_metric", None)
  checkpointer = checkpoints.Checkpointer(model_dir, max_to_keep=keep_checkpoints, best_metric=best_metric,
                                          best_mode=getattr(periodic_eval, "best_mode", "max"))
  data_state = _latest_data_state(checkpointer)

  # ---- Input: produced in a background thread from here on, so building the
  # datasets and filling the packer overlap with model creation and compilation.
  # The model says which packed rows it reads (see the docstring for the lengths).
  train_input = pipeline.TrainInput(
      pipeline.InputConfig(mixture_or_task_name, batch_size, input_length, target_length, seed=seed,
                           autotune=input_autotune, data_shards=data_shards,
                           feature_layout=("preference_pairs" if dpo else
                                           getattr(model, "feature_layout", "encoder_decoder")),
                           # The decoder-only model's start token (DecoderOnlyModel.bos_id).
                           bos_id=(None if dpo or getattr(model, "feature_layout", None) != "decoder_only"
                                   else packing.packer_bos_id(getattr(model, "bos_id", 0)))),
      process_index=jax.process_index(), process_count=jax.process_count(), prefetch=input_prefetch,
      state=data_state)

  # ---- Model, optimizer, sharded state --------------------------------------
  schedule = optimizers.learning_rate_schedule(total_steps=train_steps)
  optimizer = optimizers.create_optimizer(schedule)
  # The run's own checkpoints win over init_checkpoint, except under LoRA: they hold only the
  # adapters, and init_checkpoint (or LoRAModel.base_checkpoint) gives the frozen base on every start.
  adapters_only = state_lib.trains_adapters_only(model)
  if adapters_only:
    init_from = state_lib.lora_base(model, init_checkpoint)
  elif dpo:
    init_from = init_checkpoint  # the reference, also when the run resumes from its own checkpoint
  else:
    init_from = None if checkpointer.all_steps() else init_checkpoint
  graphdef, state = state_lib.init_train_state(model, optimizer, seed, mesh, rules, init_checkpoint=init_from)
  reference_params = jax.tree.map(jax.numpy.copy, state.params) if dpo and not adapters_only else None
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  if adapters_only:
    state_lib.record_lora_base(model_dir, model, init_from)
  say = print if jax.process_index() == 0 else (lambda text: None)
  state, restored_data_state = _restore_newest_readable(checkpointer, state, say)
  start_step = int(jax.device_get(state.step))
  if restored_data_state != data_state:
    # The newest checkpoint was damaged: read from the position of the one restored.
    train_input.set_state(restored_data_state or dict(train_input.get_state(), batches_emitted=0))
  if not start_step:
    origin = f"from {init_from}" if init_from else "from scratch"
    frozen_mib = sum(x.nbytes for x in jax.tree.leaves(state.frozen)) / 2**20
    trained = (f"{n_params:,} LoRA parameters on a {frozen_mib:,.1f} MiB frozen base" if adapters_only
               else f"{n_params:,} parameters")
    say(f"training {origin}: {trained}, mesh {dict(mesh.shape)}")
  writer = train_metrics.MetricsWriter(model_dir, start_step, train_steps, enabled=jax.process_index() == 0)

  # ---- Update step: jitted once, explicit shardings, state donated -------------
  state_shardings = state_lib.shardings_of(state)
  if dpo:
    dpo_step_fn = jax.jit(
        functools.partial(dpo_lib.dpo_step, dpo_lib.DPOStepConfig(graphdef, model, optimizer, schedule, dpo)),
        in_shardings=(state_shardings, partitioning.batch_sharding(mesh),
                      None if reference_params is None else state_shardings.params),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    step_fn = lambda state, batch: dpo_step_fn(state, batch, reference_params)  # noqa: E731
  else:
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
  batch_counts = preference.batch_counts if dpo else packing.batch_counts

  # ---- Loop -----------------------------------------------------------------
  step = start_step
  try:
    with _sigterm_flag() as preempted:
      pending, host = [], {"tokens": 0.0, "slots": 0.0, "examples": 0.0}
      last_log_time = time.perf_counter()
      while step < train_steps:
        local_batch = next(train_input)
        for k, v in batch_counts(local_batch).items():
          host[k] += v
        with state_lib.mesh_context(mesh, rules):
          state, step_metrics = step_fn(state, partitioning.global_batch(local_batch, mesh))
        pending.append(step_metrics)
        step += 1
        writer.advance()
        if step == start_step + 1:
          _write_run_files(model_dir, mixture_or_task_name)

        if step % log_every == 0 or step == train_steps:
          fetched = jax.device_get(pending)  # the one host sync per logging interval
          _check_finite(fetched, step, checkpointer)
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

        eval_scalars = None
        if periodic_eval is not None and periodic_eval.due(step, train_steps):
          _check_finite(jax.device_get(pending), step, checkpointer)
          with state_lib.mesh_context(mesh, rules):
            eval_scalars = periodic_eval(model, graphdef, state_lib.model_params(state), mesh)
          writer.write_scalars(step, eval_scalars)
          writer.message(f"step {step}: " + ", ".join(
              f"{k[len('eval/'):]} {v:.3f}" for k, v in eval_scalars.items() if k.endswith("_mean")))

        stopping = preempted.is_set()
        if step % checkpoint_every == 0 or step == train_steps or stopping or eval_scalars:
          # Never save a state that a non-finite loss or gradient may have reached.
          _check_finite(jax.device_get(pending), step, checkpointer)
          # An evaluated state is saved with its scores, as a candidate for the best checkpoint.
          state_lib.save_train_state(checkpointer, state, train_input.get_state(), metrics=eval_scalars)
        if stopping:
          writer.message(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume")
          break
      checkpointer.wait()  # the best checkpoint is read off the saved metrics
      best = f", best by {best_metric}: step {checkpointer.best_step()}" if best_metric else ""
  finally:
    train_input.close()
    checkpointer.close()  # lets pending saves finish, also when the run stops on an error
  writer.message(f"done: step {step}, checkpoints {checkpointer.all_steps()} in {checkpointer.directory}{best}")
  writer.close()
  return state

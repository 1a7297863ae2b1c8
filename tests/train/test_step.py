"""The train step: loss normalized by the global target-token count, and a real update."""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from sft_jax.data import packing
from sft_jax.models import t5
from sft_jax.train import partitioning
from sft_jax.train import state as state_lib
from sft_jax.train.step import StepConfig, train_step

MODEL = t5.EncoderDecoderModel(t5.T5Config(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                           num_encoder_layers=1, num_decoder_layers=1))


def _batch():
  rng = np.random.default_rng(0)
  # Rows with very different target counts: a per-row or per-example mean would differ
  # from the per-token mean over the whole batch.
  rows = [[(rng.integers(3, 200, 9), rng.integers(3, 200, 12))],
          [(rng.integers(3, 200, 5), rng.integers(3, 200, 2)), (rng.integers(3, 200, 4), rng.integers(3, 200, 3))]]
  laid = [packing.assemble_row([(i.astype(np.int32), t.astype(np.int32)) for i, t in r], 16, 16) for r in rows]
  return {k: np.stack([r[k] for r in laid]) for k in packing.FEATURES}


def _numpy_nll(params, graphdef, batch):
  logits = np.asarray(nnx.merge(graphdef, params)(
      batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      encoder_segment_ids=batch["encoder_segment_ids"], decoder_segment_ids=batch["decoder_segment_ids"],
      encoder_positions=batch["encoder_positions"], decoder_positions=batch["decoder_positions"]), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
      -1, keepdims=True)
  return -np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]


def _numpy_token_mean_loss(params, graphdef, batch):
  w = batch["decoder_loss_weights"]
  return (_numpy_nll(params, graphdef, batch) * w).sum() / w.sum()


def _numpy_example_mean_loss(params, graphdef, batch):
  nll, seg = _numpy_nll(params, graphdef, batch), batch["decoder_segment_ids"]
  return np.mean([nll[r][seg[r] == s].mean() for r in range(len(seg)) for s in np.unique(seg[r]) if s])


def test_loss_is_the_mean_over_all_target_tokens_of_the_global_batch():
  mesh = partitioning.create_mesh()
  optimizer = optax.sgd(0.1)
  graphdef, state = state_lib.init_train_state(MODEL, optimizer, 0, mesh, partitioning.logical_axis_rules())
  batch = _batch()
  expected = _numpy_token_mean_loss(state.params, graphdef, batch)
  config = StepConfig(graphdef, MODEL, optimizer, optax.constant_schedule(0.1))
  new_state, metrics = jax.jit(lambda s, b: train_step(config, s, b))(state, partitioning.global_batch(batch, mesh))
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  assert float(metrics["target_tokens"]) == batch["decoder_loss_weights"].sum() == 17
  assert int(new_state.step) == 1
  # The update is plain SGD: new = old - 0.1 * grad, so parameters moved.
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))]
  assert all(moved)


def test_examples_normalization_averages_each_examples_mean_token_loss():
  mesh = partitioning.create_mesh()
  optimizer = optax.sgd(0.1)
  graphdef, state = state_lib.init_train_state(MODEL, optimizer, 0, mesh, partitioning.logical_axis_rules())
  # Sharper weights than at init make per-token losses differ, so the two normalizations differ.
  state = state.replace(params=jax.tree.map(lambda p: 4 * p, state.params))
  batch = _batch()
  expected = _numpy_example_mean_loss(state.params, graphdef, batch)
  assert not np.isclose(expected, _numpy_token_mean_loss(state.params, graphdef, batch), rtol=1e-3)
  config = StepConfig(graphdef, MODEL, optimizer, optax.constant_schedule(0.1), loss_normalization="examples")
  _, metrics = jax.jit(lambda s, b: train_step(config, s, b))(state, partitioning.global_batch(batch, mesh))
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  assert float(metrics["target_tokens"]) == batch["decoder_loss_weights"].sum() == 17


def test_unknown_loss_normalization_is_refused():
  with pytest.raises(ValueError, match="loss_normalization='sequences'"):
    StepConfig(None, MODEL, optax.sgd(0.1), optax.constant_schedule(0.1), loss_normalization="sequences")


def _uneven_batch(rows: int = 8):
  """Rows whose target counts differ a lot, so strided microbatches hold different token totals."""
  rng = np.random.default_rng(1)
  laid = []
  for r in range(rows):
    n_targets = 1 + (r * 5) % 14
    pairs = [(rng.integers(3, 200, 4 + r % 9).astype(np.int32), rng.integers(3, 200, n_targets).astype(np.int32))]
    laid.append(packing.assemble_row(pairs, 16, 16))
  return {k: np.stack([r[k] for r in laid]) for k in packing.FEATURES}


@pytest.mark.parametrize("loss_normalization", ["tokens", "examples"])
def test_microbatches_give_the_full_batch_update(loss_normalization):
  mesh = partitioning.create_mesh()
  # SGD, so parameter differences are gradient differences (Adam's first step, lr * g / |g|,
  # would amplify rounding in near-zero gradients).
  optimizer = optax.sgd(1.0)
  graphdef, state = state_lib.init_train_state(MODEL, optimizer, 0, mesh, partitioning.logical_axis_rules())
  batch = _uneven_batch()
  split = [batch["decoder_loss_weights"][m::4].sum() for m in range(4)]
  assert len(set(split)) > 1  # the microbatches really hold different numbers of target tokens
  results = {}
  for m in (1, 4):
    config = StepConfig(graphdef, MODEL, optimizer, optax.constant_schedule(1.0), num_microbatches=m,
                        loss_normalization=loss_normalization)
    results[m] = jax.jit(lambda s, b, c=config: train_step(c, s, b))(state, partitioning.global_batch(batch, mesh))
  (full_state, full_metrics), (micro_state, micro_metrics) = results[1], results[4]
  for key in ("loss", "grad_norm", "target_tokens", "correct"):
    np.testing.assert_allclose(float(micro_metrics[key]), float(full_metrics[key]), rtol=1e-5)
  for full, micro, before in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(micro_state.params),
                                 jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(micro), np.asarray(full), rtol=1e-4, atol=1e-6)
    assert not np.allclose(np.asarray(full), np.asarray(before))


def test_microbatches_must_divide_the_batch():
  mesh = partitioning.create_mesh()
  optimizer = optax.sgd(0.1)
  graphdef, state = state_lib.init_train_state(MODEL, optimizer, 0, mesh, partitioning.logical_axis_rules())
  config = StepConfig(graphdef, MODEL, optimizer, optax.constant_schedule(0.1), num_microbatches=3)
  with pytest.raises(ValueError, match="num_microbatches=3"):
    train_step(config, state, partitioning.global_batch(_uneven_batch(), mesh))


def test_bfloat16_activations_keep_float32_master_weights_and_optimizer_state():
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  optimizer = optax.adamw(1e-3)
  batch = partitioning.global_batch(_batch(), mesh)
  results = {}
  for dtype in ("float32", "bfloat16"):
    model = t5.EncoderDecoderModel(dataclasses.replace(MODEL.config, dtype=dtype))
    graphdef, state = state_lib.init_train_state(model, optimizer, 0, mesh, rules)
    config = StepConfig(graphdef, model, optimizer, optax.constant_schedule(1e-3))
    step = jax.jit(lambda s, b: train_step(config, s, b))
    jaxpr = str(jax.make_jaxpr(lambda s, b: train_step(config, s, b))(state, batch))
    new_state, metrics = step(state, batch)
    results[dtype] = (jaxpr, new_state, float(metrics["loss"]), float(metrics["grad_norm"]))
  jaxpr, state, loss, grad_norm = results["bfloat16"]
  # Matmuls run in bfloat16; parameters, Adam moments and the update stay float32.
  assert "bf16[" in jaxpr and "bf16[" not in results["float32"][0]
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {np.dtype("float32")}
  np.testing.assert_allclose(loss, results["float32"][2], rtol=2e-2)
  np.testing.assert_allclose(grad_norm, results["float32"][3], rtol=5e-2)

"""The train step: a pure function `train_step(state, batch) -> (state, metrics)`.

By default the loss is the sum of target-token cross-entropies divided by the number
of target tokens in the whole global batch (not per row), so every target token weighs
the same however the examples were packed. With `loss_normalization="examples"` each
example's tokens are first scaled to sum to one, so the loss is the mean over the
batch's examples of their mean token loss, and short answers (a class label, a number)
weigh as much as long ones.

With `num_microbatches > 1` the global batch is split into that many microbatches whose
summed losses and gradients are accumulated in a `lax.scan` and divided once by the
batch's total weight, so the update equals the full-batch one whatever the number of
target tokens in each microbatch.

Under LoRA (models/lora.py) `state.params` holds only the trainable adapters and
`state.frozen` the rest of the model (frozen, possibly NF4-quantized base weights): the
gradient, the optimizer and the update see the adapters alone, and `frozen` passes through.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sft_jax.models import losses

LOSS_NORMALIZATIONS = ("tokens", "examples")


@flax.struct.dataclass
class TrainState:
  """Everything a step updates (step counter, trainable parameters, optimizer state), and the
  model state it only reads (`frozen`: None unless part of the model is frozen, as under LoRA)."""

  step: jax.Array
  params: Any  # nnx.State of the trainable variables (all nnx.Param of a full fine-tune)
  opt_state: Any
  frozen: Any = None  # nnx.State of the frozen variables, or None


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static parts of the step, closed over before jitting."""

  graphdef: Any
  model: Any  # the model interface: loss_fn(module, batch, ...)
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  label_smoothing: float = 0.0
  z_loss: float = 0.0
  dropout_seed: int = 0
  loss_normalization: str = "tokens"  # or "examples"
  num_microbatches: int = 1

  def __post_init__(self):
    if self.loss_normalization not in LOSS_NORMALIZATIONS:
      raise ValueError(f"loss_normalization={self.loss_normalization!r}; expected one of {LOSS_NORMALIZATIONS}")
    if self.num_microbatches < 1:
      raise ValueError(f"num_microbatches={self.num_microbatches}; expected a positive integer")


def _split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int) -> dict[str, jax.Array]:
  """[B, ...] -> [M, B // M, ...], microbatch m holding rows m, m + M, m + 2M, ...

  Strided rather than contiguous: with rows sharded contiguously over the batch axes,
  every microbatch then keeps rows on every device.
  """
  rows = next(iter(batch.values())).shape[0]
  if rows % num_microbatches:
    raise ValueError(f"batch of {rows} rows does not split into num_microbatches={num_microbatches}")
  return {k: jnp.moveaxis(v.reshape(rows // num_microbatches, num_microbatches, *v.shape[1:]), 1, 0)
          for k, v in batch.items()}


def model_module(graphdef: Any, params: Any, frozen: Any = None) -> Any:
  """The network of trainable `params` and, if any, `frozen` state.

  Frozen variables are copied so that they belong to the current trace (like the params, which
  jax.grad rebuilds): nnx.remat inside the network updates variables only of its own trace.
  """
  if frozen is None:
    return nnx.merge(graphdef, params)
  return nnx.merge(graphdef, params, frozen, copy=True)


def _summed_loss_and_grads(config: StepConfig, params: Any, frozen: Any, batch: Mapping[str, jax.Array],
                           dropout_rng: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array, dict]]:
  """Gradients (w.r.t. `params` only) of the summed loss, with (loss_sum, weight_sum, aux sums)."""

  def loss_sum_of(p):
    loss_sum, weight_sum, aux = config.model.loss_fn(
        model_module(config.graphdef, p, frozen), batch, dropout_rng=dropout_rng,
        label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    return loss_sum, (loss_sum, weight_sum, aux)

  grads, sums = jax.grad(loss_sum_of, has_aux=True)(params)
  return grads, sums


def _accumulated_loss_and_grads(config: StepConfig, params: Any, frozen: Any, batch: Mapping[str, jax.Array],
                                dropout_rng: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array, dict]]:
  """`_summed_loss_and_grads` over the whole batch, one microbatch at a time."""
  if config.num_microbatches == 1:
    return _summed_loss_and_grads(config, params, frozen, batch, dropout_rng)
  micro = _split_microbatches(batch, config.num_microbatches)

  def accumulate(carry, indexed):
    index, microbatch = indexed
    out = _summed_loss_and_grads(config, params, frozen, microbatch, jax.random.fold_in(dropout_rng, index))
    return jax.tree.map(jnp.add, carry, out), None

  first = jax.tree.map(lambda v: v[0], micro)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      lambda b: _summed_loss_and_grads(config, params, frozen, b, dropout_rng), first))
  total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(config.num_microbatches), micro))
  return total


def train_step(config: StepConfig, state: TrainState,
               batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a global batch; returns the new state and scalar metrics."""
  dropout_rng = jax.random.fold_in(jax.random.key(config.dropout_seed), state.step)
  target_tokens = jnp.sum(losses.target_weights(batch))
  if config.loss_normalization == "examples":
    batch = dict(batch, decoder_loss_weights=losses.per_example_weights(
        losses.target_weights(batch), batch.get("decoder_segment_ids")))

  grad_sums, (loss_sum, weight_sum, aux) = _accumulated_loss_and_grads(
      config, state.params, state.frozen, batch, dropout_rng)
  # One division by the global batch's total weight: the full-batch mean, however split.
  denominator = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denominator, grad_sums)
  loss = loss_sum / denominator
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "target_tokens": target_tokens,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": jnp.asarray(config.schedule(state.step), jnp.float32),
  }
  # Weighted means of the model's summed auxiliaries ("correct_sum" -> "correct": token accuracy,
  # over tokens or, with "examples" normalization, the mean of each example's token accuracy).
  metrics.update({k[:-len("_sum")]: v / denominator
                  for k, v in aux.items() if k.endswith("_sum") and k != "weight_sum"})
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, frozen=state.frozen), metrics

"""Direct preference optimization (Rafailov et al., 2023) on the SFT stack: losses, pair scores, the step.

A preference batch holds one (prompt, chosen, rejected) triple per row in the evaluator's
(inputs, targets) layout, which both model families score:

  encoder_input_tokens [B, S] (and optionally encoder_segment_ids / encoder_positions): the prompt
  chosen_decoder_input_tokens, chosen_decoder_target_tokens, chosen_decoder_loss_weights [B, T]
  rejected_decoder_input_tokens, rejected_decoder_target_tokens, rejected_decoder_loss_weights [B, T]
  reference_chosen_log_probs, reference_rejected_log_probs [B]   (optional, precomputed)

A sequence's log-probability is the sum over its weighted target tokens. The reference model's
log-probabilities come from, in order of preference:
  1. the batch (`reference_*_log_probs`, e.g. precomputed once by `reference_log_probs` in a pass
     over the data and cached with it);
  2. under LoRA, the policy's own network with every adapter set to zero: the frozen base is the
     reference (the SFT model the adapters start from), so no second copy of the weights exists;
  3. `reference_params`, a frozen copy of the starting parameters (a full fine-tune).

Losses over h = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l)):
  sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   DPO; eps > 0 is the
           label-smoothed "conservative" DPO (cDPO), eps the assumed rate of flipped labels
  ipo      (h - 1 / (2 beta))^2                                         IPO (Azar et al., 2023)
  hinge    max(0, 1 - beta h)                                           SLiC-style hinge
The implicit rewards are beta (log pi(y) - log ref(y)) for each side.

With `nll_weight` = alpha > 0 the step adds alpha times the chosen answers' negative log-likelihood
per target token (RPO, Pang et al., 2024; TRL's `rpo_alpha`). When chosen and rejected answers share
most tokens (near misses), plain DPO lowers both log-probabilities and the chosen answer drifts
away; the NLL term holds it up, so the margin comes from pushing the rejected answer down.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import optax

from sft_jax.train.step import TrainState, model_module

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
SIDES = ("chosen", "rejected")
REFERENCE_KEYS = tuple(f"reference_{side}_log_probs" for side in SIDES)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DPOConfig:
  """The preference loss: its form, beta (the strength of the pull towards the reference) and cDPO's eps."""

  beta: float = 0.1
  loss_type: str = "sigmoid"
  label_smoothing: float = 0.0
  nll_weight: float = 0.0

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"DPOConfig.loss_type={self.loss_type!r}; expected one of {LOSS_TYPES}")
    if self.beta <= 0:
      raise ValueError(f"DPOConfig.beta={self.beta}; expected a positive number")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"DPOConfig.label_smoothing={self.label_smoothing}; expected 0 <= eps < 0.5")
    if self.label_smoothing and self.loss_type != "sigmoid":
      raise ValueError(f"DPOConfig.label_smoothing applies to loss_type='sigmoid', not {self.loss_type!r}")
    if self.nll_weight < 0:
      raise ValueError(f"DPOConfig.nll_weight={self.nll_weight}; expected >= 0")


def preference_loss(config: DPOConfig, policy_chosen_B: jax.Array, policy_rejected_B: jax.Array,
                    reference_chosen_B: jax.Array,
                    reference_rejected_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loss [B], chosen rewards [B], rejected rewards [B]) from sequence log-probabilities."""
  h_B = (policy_chosen_B - policy_rejected_B) - (reference_chosen_B - reference_rejected_B)
  beta, eps = config.beta, config.label_smoothing
  if config.loss_type == "sigmoid":
    loss_B = -(1.0 - eps) * jax.nn.log_sigmoid(beta * h_B) - eps * jax.nn.log_sigmoid(-beta * h_B)
  elif config.loss_type == "ipo":
    loss_B = jnp.square(h_B - 1.0 / (2.0 * beta))
  else:
    loss_B = jax.nn.relu(1.0 - beta * h_B)
  chosen_rewards_B = beta * jax.lax.stop_gradient(policy_chosen_B - reference_chosen_B)
  rejected_rewards_B = beta * jax.lax.stop_gradient(policy_rejected_B - reference_rejected_B)
  return loss_B, chosen_rewards_B, rejected_rewards_B


def split_pairs(batch: Mapping[str, jax.Array]) -> tuple[dict, dict, dict]:
  """(prompt features, chosen target features, rejected target features) of a preference batch."""
  sides = {side: {k[len(side) + 1:]: v for k, v in batch.items() if k.startswith(side + "_")} for side in SIDES}
  prompts = {k: v for k, v in batch.items() if k.startswith("encoder_")}
  for side, features in sides.items():
    if "decoder_target_tokens" not in features:
      raise KeyError(f"preference batch has no {side}_decoder_target_tokens (keys: {sorted(batch)})")
  return prompts, sides["chosen"], sides["rejected"]


def pair_log_probs(model: Any, module: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Sequence log-probabilities [B] of the chosen and the rejected target of every row."""
  return model.score_pairs(module, *split_pairs(batch))


def reference_log_probs(model: Any, graphdef: Any, params: Any, frozen: Any,
                        batch: Mapping[str, jax.Array],
                        reference_params: Any = None) -> tuple[jax.Array, jax.Array]:
  """The reference model's (chosen, rejected) log-probabilities: from the batch if it carries them,
  else the LoRA base (adapters zeroed) or `reference_params` (see the module docstring)."""
  if all(k in batch for k in REFERENCE_KEYS):
    return tuple(batch[k] for k in REFERENCE_KEYS)
  if frozen is not None:
    # Zero adapters compute the base function exactly (delta = A @ B = 0), over the one frozen copy.
    module = model_module(graphdef, jax.tree.map(jnp.zeros_like, params), frozen)
  elif reference_params is not None:
    module = model_module(graphdef, reference_params)
  else:
    raise ValueError("no reference log-probabilities: the batch carries none, the model has no frozen "
                     "LoRA base, and no reference_params were given")
  chosen_B, rejected_B = pair_log_probs(model, module, batch)
  return jax.lax.stop_gradient(chosen_B), jax.lax.stop_gradient(rejected_B)


@dataclasses.dataclass(frozen=True)
class DPOStepConfig:
  """Static parts of the DPO step, closed over before jitting."""

  graphdef: Any
  model: Any  # the model interface: score_pairs(module, prompts, chosen, rejected)
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  dpo: DPOConfig = DPOConfig()


def dpo_step(config: DPOStepConfig, state: TrainState, batch: Mapping[str, jax.Array],
             reference_params: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the mean preference loss of a global batch; returns state and metrics."""
  ref_chosen_B, ref_rejected_B = reference_log_probs(config.model, config.graphdef, state.params, state.frozen,
                                                     batch, reference_params)

  def loss_of(params):
    module = model_module(config.graphdef, params, state.frozen)
    chosen_B, rejected_B = pair_log_probs(config.model, module, batch)
    loss_B, chosen_rewards_B, rejected_rewards_B = preference_loss(
        config.dpo, chosen_B, rejected_B, ref_chosen_B, ref_rejected_B)
    loss = jnp.mean(loss_B)
    nll = -jnp.sum(chosen_B) / chosen_tokens
    if config.dpo.nll_weight:
      loss = loss + config.dpo.nll_weight * nll
    return loss, (nll, chosen_B, rejected_B, chosen_rewards_B, rejected_rewards_B)

  chosen_weights = batch.get("chosen_decoder_loss_weights", batch["chosen_decoder_target_tokens"] != 0)
  chosen_tokens = jnp.maximum(jnp.sum(chosen_weights.astype(jnp.float32)), 1.0)
  (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  nll, chosen_B, rejected_B, chosen_rewards_B, rejected_rewards_B = aux
  updates, opt_state = config.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": jnp.asarray(config.schedule(state.step), jnp.float32),
      # Ties count as wrong: a pair is learned when the chosen reward is strictly higher.
      "reward_accuracy": jnp.mean((chosen_rewards_B > rejected_rewards_B).astype(jnp.float32)),
      "reward_margin": jnp.mean(chosen_rewards_B - rejected_rewards_B),
      "chosen_reward": jnp.mean(chosen_rewards_B),
      "rejected_reward": jnp.mean(rejected_rewards_B),
      "chosen_log_prob": jnp.mean(chosen_B),
      "rejected_log_prob": jnp.mean(rejected_B),
      "chosen_nll_per_token": nll,
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, frozen=state.frozen), metrics

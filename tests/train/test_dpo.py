"""DPO: the losses and their gradients against numpy, pair scores, the reference model, the step."""

import functools
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.models import decoder, lora, t5
from sft_jax.train import dpo, optimizers, partitioning
from sft_jax.train import state as state_lib
from sft_jax.train.step import model_module

T5_BASE = t5.EncoderDecoderModel(t5.T5Config(vocab_size=96, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                             num_encoder_layers=1, num_decoder_layers=1))
LLAMA_BASE = decoder.DecoderOnlyModel(decoder.DecoderConfig(vocab_size=96, d_model=32, num_layers=1, num_heads=2,
                                                            num_kv_heads=1, head_dim=16, d_ff=64))


# ---- the loss against numpy -------------------------------------------------------------------

def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_loss_and_dloss_dh(h, beta, loss_type, eps):
  """The published losses and their derivative with respect to h, written out by hand."""
  if loss_type == "sigmoid":
    loss = -(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h)
    d = -(1 - eps) * beta * _sigmoid(-beta * h) + eps * beta * _sigmoid(beta * h)
  elif loss_type == "ipo":
    loss = (h - 1 / (2 * beta)) ** 2
    d = 2 * (h - 1 / (2 * beta))
  else:
    loss = np.maximum(0.0, 1 - beta * h)
    d = np.where(1 - beta * h > 0, -beta, 0.0)
  return loss, d


LOG_PROBS = {  # policy chosen, policy rejected, reference chosen, reference rejected
    "pc": np.array([-3.0, -10.0, -7.5, -2.25, -20.0], np.float64),
    "pr": np.array([-4.0, -9.0, -7.5, -8.0, -1.0], np.float64),
    "rc": np.array([-3.5, -9.5, -6.0, -2.0, -19.0], np.float64),
    "rr": np.array([-3.5, -9.5, -7.0, -6.0, -2.5], np.float64),
}


@pytest.mark.parametrize("loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.2),
                                                ("ipo", 0.1, 0.0), ("ipo", 1.0, 0.0), ("hinge", 0.3, 0.0)])
def test_loss_rewards_and_gradients_equal_the_formulas(loss_type, beta, eps):
  config = dpo.DPOConfig(beta=beta, loss_type=loss_type, label_smoothing=eps)
  pc, pr, rc, rr = (jnp.asarray(LOG_PROBS[k], jnp.float32) for k in ("pc", "pr", "rc", "rr"))
  loss_B, chosen_rewards_B, rejected_rewards_B = dpo.preference_loss(config, pc, pr, rc, rr)

  h = (LOG_PROBS["pc"] - LOG_PROBS["pr"]) - (LOG_PROBS["rc"] - LOG_PROBS["rr"])
  want_loss, dloss_dh = _numpy_loss_and_dloss_dh(h, beta, loss_type, eps)
  np.testing.assert_allclose(np.asarray(loss_B), want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(chosen_rewards_B), beta * (LOG_PROBS["pc"] - LOG_PROBS["rc"]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(rejected_rewards_B), beta * (LOG_PROBS["pr"] - LOG_PROBS["rr"]), rtol=1e-6)

  # d mean(loss) / d policy log-probs: h grows one for one with the chosen, falls with the rejected.
  grad_pc, grad_pr = jax.grad(lambda a, b: jnp.mean(dpo.preference_loss(config, a, b, rc, rr)[0]),
                              argnums=(0, 1))(pc, pr)
  np.testing.assert_allclose(np.asarray(grad_pc), dloss_dh / len(h), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad_pr), -dloss_dh / len(h), rtol=1e-5, atol=1e-7)


def test_sigmoid_loss_at_a_zero_margin_is_log_2_and_the_reference_is_not_differentiated():
  config = dpo.DPOConfig(beta=0.1)
  x = jnp.array([-5.0, -2.0])
  np.testing.assert_allclose(np.asarray(dpo.preference_loss(config, x, x, x, x)[0]), np.log(2.0), rtol=1e-6)
  grad_ref = jax.grad(lambda r: jnp.sum(dpo.preference_loss(config, x, x - 1, r, x)[0]))(x)
  assert np.all(np.asarray(grad_ref) != 0)  # the loss depends on the reference ...
  grad_rewards = jax.grad(lambda p: jnp.sum(dpo.preference_loss(config, p, x, x, x)[1]))(x)
  np.testing.assert_array_equal(np.asarray(grad_rewards), 0.0)  # ... the logged rewards carry no gradient


@pytest.mark.parametrize("kwargs,match", [({"loss_type": "kto"}, "loss_type"), ({"beta": 0.0}, "beta"),
                                          ({"label_smoothing": 0.5}, "label_smoothing"),
                                          ({"loss_type": "ipo", "label_smoothing": 0.1}, "applies to"),
                                          ({"nll_weight": -1.0}, "nll_weight")])
def test_bad_configs_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dpo.DPOConfig(**kwargs)


# ---- pair scores ------------------------------------------------------------------------------

def _pair_batch(batch_size=3, prompt_length=7, target_length=5, seed=0):
  """Random prompts and two different targets per row, right-padded, in the DPO batch layout."""
  rng = np.random.default_rng(seed)
  batch = {}
  prompt_lengths = rng.integers(2, prompt_length + 1, batch_size)
  prompts = rng.integers(3, 90, (batch_size, prompt_length))
  batch["encoder_input_tokens"] = np.where(np.arange(prompt_length) < prompt_lengths[:, None], prompts, 0)
  for side in dpo.SIDES:
    lengths = rng.integers(1, target_length + 1, batch_size)
    targets = np.where(np.arange(target_length) < lengths[:, None], rng.integers(3, 90, (batch_size, target_length)), 0)
    batch[f"{side}_decoder_target_tokens"] = targets
    batch[f"{side}_decoder_input_tokens"] = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    batch[f"{side}_decoder_loss_weights"] = (targets != 0).astype(np.float32)
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _side_batch(batch, side):
  return {"encoder_input_tokens": batch["encoder_input_tokens"],
          **{k[len(side) + 1:]: v for k, v in batch.items() if k.startswith(side + "_")}}


@pytest.mark.parametrize("model", [T5_BASE, LLAMA_BASE], ids=["t5", "llama"])
def test_pair_scores_equal_scoring_each_side_alone(model):
  module, batch = model.init(0), _pair_batch()
  chosen_B, rejected_B = dpo.pair_log_probs(model, module, batch)
  for side, got in zip(dpo.SIDES, (chosen_B, rejected_B)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(model.score_batch(module, _side_batch(batch, side))),
                               rtol=1e-5)
  assert np.all(np.asarray(chosen_B) < 0) and not np.allclose(np.asarray(chosen_B), np.asarray(rejected_B))


def test_a_batch_without_a_side_is_refused():
  batch = {k: v for k, v in _pair_batch().items() if not k.startswith("rejected_")}
  with pytest.raises(KeyError, match="rejected_decoder_target_tokens"):
    dpo.split_pairs(batch)


# ---- the reference model and the step --------------------------------------------------------

def _state(model, seed=0, peak=1e-2):
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  schedule = optimizers.learning_rate_schedule(peak=peak, warmup_steps=1, total_steps=100, decay="constant")
  optimizer = optimizers.create_optimizer(schedule, weight_decay=0.0)
  graphdef, state = state_lib.init_train_state(model, optimizer, seed, mesh, rules)
  return graphdef, state, dpo.DPOStepConfig(graphdef, model, optimizer, schedule)


@pytest.mark.parametrize("base", [T5_BASE, LLAMA_BASE], ids=["t5", "llama"])
def test_lora_reference_is_the_base_without_adapters(base):
  model = lora.LoRAModel(base, targets=("query", "value"), rank=4, alpha=8.0)
  graphdef, state, _ = _state(model)
  # Trained adapters: the policy has moved away from the base.
  keys = iter(jax.random.split(jax.random.key(5), 64))
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype), state.params)
  batch = _pair_batch()
  got = dpo.reference_log_probs(model, graphdef, params, state.frozen, batch)
  want = base.score_pairs(base.init(0), *dpo.split_pairs(batch))  # LoRAModel.init(0) wraps base.init(0)
  policy = dpo.pair_log_probs(model, model_module(graphdef, params, state.frozen), batch)
  for g, w, p in zip(got, want, policy):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5)
    assert not np.allclose(np.asarray(p), np.asarray(w), rtol=1e-3)


def test_precomputed_and_held_reference_give_the_same_step():
  graphdef, state, config = _state(T5_BASE)
  reference_params = jax.tree.map(jnp.copy, state.params)
  batch = _pair_batch()
  ref_chosen, ref_rejected = dpo.reference_log_probs(T5_BASE, graphdef, state.params, None, batch,
                                                     reference_params=reference_params)
  cached = dict(batch, reference_chosen_log_probs=ref_chosen, reference_rejected_log_probs=ref_rejected)
  _, held = dpo.dpo_step(config, state, batch, reference_params)
  _, precomputed = dpo.dpo_step(config, state, cached)
  for key in held:
    np.testing.assert_allclose(np.asarray(precomputed[key]), np.asarray(held[key]), rtol=1e-6, err_msg=key)
  # At step 0 the policy is the reference: every reward is 0 and the sigmoid loss is log 2.
  np.testing.assert_allclose(float(held["loss"]), np.log(2.0), rtol=1e-6)
  assert float(held["reward_margin"]) == 0.0 and float(held["reward_accuracy"]) == 0.0
  with pytest.raises(ValueError, match="no reference"):
    dpo.dpo_step(config, state, batch)


def test_nll_weight_adds_the_chosen_per_token_nll_and_holds_the_chosen_answer_up():
  graphdef, state, config = _state(T5_BASE)
  reference_params = jax.tree.map(jnp.copy, state.params)
  batch = _pair_batch(batch_size=8, seed=3)
  # The chosen answers' NLL per target token, from scoring the chosen side alone.
  chosen = np.asarray(T5_BASE.score_batch(model_module(graphdef, state.params), _side_batch(batch, "chosen")))
  want_nll = -chosen.sum() / float(np.asarray(batch["chosen_decoder_loss_weights"]).sum())
  configs = {alpha: dpo.DPOStepConfig(graphdef, T5_BASE, config.optimizer, config.schedule,
                                      dpo.DPOConfig(beta=0.5, nll_weight=alpha)) for alpha in (0.0, 2.0)}
  steps = {alpha: jax.jit(functools.partial(dpo.dpo_step, c)) for alpha, c in configs.items()}
  metrics = {alpha: jax.device_get(step(state, batch, reference_params)[1]) for alpha, step in steps.items()}
  for alpha, m in metrics.items():
    np.testing.assert_allclose(m["chosen_nll_per_token"], want_nll, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], np.log(2.0) + alpha * want_nll, rtol=1e-5)
  # Trained with the NLL term the chosen answers gain probability over the reference.
  for _ in range(20):
    state, m = steps[2.0](state, batch, reference_params)
  m = jax.device_get(m)
  assert m["chosen_reward"] > 0 and m["reward_accuracy"] == 1.0 and m["chosen_nll_per_token"] < 0.5 * want_nll


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_steps_learn_the_preferences(loss_type):
  graphdef, state, config = _state(T5_BASE)
  config = dpo.DPOStepConfig(graphdef, T5_BASE, config.optimizer, config.schedule,
                             dpo.DPOConfig(beta=0.5, loss_type=loss_type))
  reference_params = jax.tree.map(jnp.copy, state.params)
  batch = _pair_batch(batch_size=8, seed=3)
  step = jax.jit(lambda s, b, r: dpo.dpo_step(config, s, b, r))
  first = None
  for _ in range(40):
    state, metrics = step(state, batch, reference_params)
    first = first or jax.device_get(metrics)
  last = jax.device_get(metrics)
  assert last["loss"] < 0.5 * first["loss"]
  assert last["reward_accuracy"] == 1.0 and last["reward_margin"] > 0
  # The margin comes from both sides: chosen up, rejected down (relative to the reference).
  assert last["chosen_reward"] > last["rejected_reward"]


def test_lora_dpo_holds_one_copy_of_the_base_weights():
  # Shapes no other test uses, so the live arrays counted below are this test's.
  base = t5.EncoderDecoderModel(t5.T5Config(vocab_size=97, d_model=40, num_heads=2, head_dim=20, d_ff=72,
                                            num_encoder_layers=1, num_decoder_layers=1))
  model = lora.LoRAModel(base, targets=("query", "value"), rank=4, alpha=8.0)
  graphdef, state, config = _state(model)
  step = jax.jit(lambda s, b: dpo.dpo_step(config, s, b), donate_argnums=0)
  batch = _pair_batch()
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  gc.collect()
  frozen = [x for x in jax.tree.leaves(state.frozen) if x.size > 1]
  shapes = {(x.shape, x.dtype) for x in frozen}
  live = [x for x in jax.live_arrays() if (x.shape, x.dtype) in shapes and not x.is_deleted()]
  # Every live array of a base weight's shape is one of the frozen state's own arrays: no reference copy.
  assert {id(x) for x in live} <= {id(x) for x in frozen}
  assert sum(x.nbytes for x in live) == sum(x.nbytes for x in frozen)
  assert not any(k.startswith("reference") for k in batch)
  assert 0.0 <= float(metrics["reward_accuracy"]) <= 1.0

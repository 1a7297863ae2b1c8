"""Learning-rate schedules against hand-computed values; both optimizers update nnx params."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sft_jax.train import optimizers


def test_warmup_then_cosine_matches_hand_values():
  schedule = optimizers.learning_rate_schedule(peak=1e-3, warmup_steps=10, total_steps=110, decay="cosine",
                                               end_fraction=0.1)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  # Halfway through the decay: end + (peak - end) * (1 + cos(pi/2)) / 2.
  np.testing.assert_allclose(float(schedule(60)), 1e-4 + 9e-4 * (1 + math.cos(math.pi / 2)) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(110)), 1e-4, rtol=1e-5)


def test_unknown_names_fail_clearly():
  with pytest.raises(ValueError, match="unknown decay 'exp'"):
    optimizers.learning_rate_schedule(decay="exp")
  with pytest.raises(ValueError, match="unknown optimizer 'sgdx'"):
    optimizers.create_optimizer(lambda step: 1e-3, name="sgdx")


class _Toy(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones((4, 3)))
    self.scale = nnx.Param(jnp.ones((3,)))


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizers_update_nnx_params(name):
  params = nnx.state(_Toy(), nnx.Param)
  opt = optimizers.create_optimizer(lambda step: 1e-2, name=name, weight_decay=0.1)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = opt.update(grads, opt.init(params), params)
  leaves = jax.tree.leaves(updates)
  assert all(np.all(np.isfinite(u)) and np.all(np.asarray(u) < 0) for u in leaves)


def test_weight_decay_skips_vectors():
  params = nnx.state(_Toy(), nnx.Param)
  opt = optimizers.create_optimizer(lambda step: 1.0, name="adamw", weight_decay=0.5, clip_global_norm=None)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zero_grads, opt.init(params), params)
  # With zero gradients only decoupled weight decay moves a parameter: -lr * wd * p.
  np.testing.assert_allclose(np.asarray(updates["w"][...]), -0.5 * np.ones((4, 3)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["scale"][...]), np.zeros(3), atol=1e-8)

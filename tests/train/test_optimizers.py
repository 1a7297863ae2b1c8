"""Learning-rate schedules against hand-computed values; both optimizers update nnx params."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


class _Projections(nnx.Module):
  """Parameters named as the models name them: a feed-forward kernel, an attention output
  projection ([heads, kv, embed]), a query ([embed, heads, kv]), an embedding table and a norm scale."""

  def __init__(self, rng: np.random.Generator):
    param = lambda *shape: nnx.Param(jnp.asarray(rng.normal(size=shape), jnp.float32))  # noqa: E731
    self.wi = nnx.Dict(kernel=param(6, 10))
    self.out = nnx.Dict(kernel=param(2, 3, 6))
    self.query = nnx.Dict(kernel=param(6, 2, 3))
    self.token_embedder = nnx.Dict(embedding=param(12, 6))
    self.scale = param(6)


def test_muon_views_each_projection_as_inputs_by_outputs():
  specs = optimizers.muon_dimension_numbers(nnx.state(_Projections(np.random.default_rng(0)), nnx.Param))
  is_spec = lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)  # noqa: E731
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
  by_module = {jax.tree_util.keystr(path[:1]): spec for path, spec in flat}
  dims = lambda spec: (tuple(spec.reduction_axis), tuple(spec.output_axis))  # noqa: E731
  assert dims(by_module["['wi']"]) == ((0,), (1,))
  assert dims(by_module["['out']"]) == ((0, 1), (2,))
  assert dims(by_module["['query']"]) == ((0,), (1, 2))
  assert by_module["['token_embedder']"] is None
  assert by_module["['scale']"] is None


def _orthogonal_part(matrix: np.ndarray, update: np.ndarray) -> np.ndarray:
  """`update` in the singular bases of `matrix`: U^T update V."""
  u, _, vt = np.linalg.svd(matrix, full_matrices=False)
  return u.T @ update @ vt.T


def test_muon_orthogonalizes_projections_and_gives_the_rest_adam():
  params = nnx.state(_Projections(np.random.default_rng(0)), nnx.Param)
  grads = nnx.state(_Projections(np.random.default_rng(1)), nnx.Param)
  lr, rms = 0.5, 0.2
  opt = optimizers.create_optimizer(lambda step: lr, name="muon", weight_decay=0.0, clip_global_norm=None,
                                    muon_rms=rms)
  updates, _ = opt.update(grads, opt.init(params), params)
  # A projection's first update is -lr * rms * sqrt(max(fan_in, fan_out)) * NS(g), and Newton-Schulz
  # keeps g's singular vectors while pushing its singular values towards 1 (numpy SVD reference).
  for name, fan_in in (("wi", 6), ("out", 6)):
    g = np.asarray(grads[name]["kernel"][...]).reshape(fan_in, -1)
    u = np.asarray(updates[name]["kernel"][...]).reshape(fan_in, -1)
    core = _orthogonal_part(g, -u / (lr * rms * np.sqrt(max(g.shape))))
    off_diagonal = core - np.diag(np.diag(core))
    assert np.abs(off_diagonal).max() < 1e-4, name
    assert np.all((np.diag(core) > 0.5) & (np.diag(core) < 1.3)), (name, np.diag(core))
  # The rest gets Adam with Nesterov momentum (optax's muon): its first bias-corrected step is
  # -lr * (b1 / (1 + b1) + 1) * g / |g|, with b1 = 0.9.
  for path in (("token_embedder", "embedding"), ("scale",)):
    g, u = grads, updates
    for key in path:
      g, u = g[key], u[key]
    np.testing.assert_allclose(np.asarray(u[...]), -lr * (0.9 / 1.9 + 1) * np.sign(np.asarray(g[...])),
                               rtol=1e-5)

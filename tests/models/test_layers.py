"""`layers.contract`: the projection every DenseGeneral runs, with its hand-written backward pass."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.models import layers


@pytest.mark.parametrize("batch_shape, in_shape, out_shape", [
    ((4, 7), (6,), (5,)),        # [B, L, D] x [D, F]: the feed-forward and query/key/value shape
    ((3, 2), (4, 3), (5,)),      # [B, L, H, K] x [H, K, D]: an attention output projection
    ((9,), (6,), (2, 3)),        # [N, D] x [D, H, K]
])
def test_contract_value_and_gradients_match_tensordot(batch_shape, in_shape, out_shape):
  """Value against numpy; gradients against autodiff of jnp.tensordot, for any in/out ranks."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(batch_shape + in_shape).astype(np.float32)
  kernel = rng.standard_normal(in_shape + out_shape).astype(np.float32)
  cotangent = rng.standard_normal(batch_shape + out_shape).astype(np.float32)
  num_in = len(in_shape)

  y = layers.contract(jnp.asarray(x), jnp.asarray(kernel), num_in)
  np.testing.assert_allclose(y, np.tensordot(x, kernel, axes=num_in), rtol=1e-5, atol=1e-5)

  def loss(f):
    return lambda x, k: jnp.sum(f(x, k) * cotangent)

  ours = jax.grad(loss(lambda x, k: layers.contract(x, k, num_in)), argnums=(0, 1))(x, kernel)
  reference = jax.grad(loss(lambda x, k: jnp.tensordot(x, k, axes=num_in)), argnums=(0, 1))(x, kernel)
  for got, want in zip(ours, reference):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The kernel gradient by hand: sum over every leading position of x (outer) cotangent.
  x_flat = x.reshape(-1, int(np.prod(in_shape)))
  cot_flat = cotangent.reshape(x_flat.shape[0], -1)
  np.testing.assert_allclose(ours[1], (x_flat.T @ cot_flat).reshape(kernel.shape), rtol=1e-5, atol=1e-5)


def test_contract_keeps_mixed_dtypes_of_its_operands():
  """A bfloat16 input with a float32 kernel gets gradients in each operand's own dtype."""
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  kernel = jnp.ones((4, 5), jnp.float32)
  dx, dkernel = jax.grad(lambda x, k: jnp.sum(layers.contract(x, k, 1)).astype(jnp.float32),
                         argnums=(0, 1))(x, kernel)
  assert dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(dkernel), np.full((4, 5), 6.0))
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.full((2, 3, 4), 5.0))


@pytest.mark.parametrize("policy", ["dots", "dots_with_no_batch_dims"])
def test_dot_remat_policies_keep_projection_outputs(policy, monkeypatch, capsys):
  """Under the dot policies the feed-forward block keeps what it keeps with plain tensordots."""
  mlp = layers.Mlp(8, 16, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(mlp)
  x = jnp.ones((2, 3, 8))

  def saved_residual_shapes():
    loss = jax.checkpoint(lambda x, params: jnp.sum(nnx.merge(graphdef, params)(x)),
                          policy=layers.REMAT_POLICIES[policy])
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(loss, x, params)  # one "<aval> from ..." line each
    return sorted(line.split()[0] for line in capsys.readouterr().out.splitlines())

  ours = saved_residual_shapes()
  assert ours.count("f32[2,3,16]") >= 2  # both up-projections' outputs are kept, not recomputed
  monkeypatch.setattr(layers, "contract", lambda x, kernel, num_in: jnp.tensordot(x, kernel, axes=num_in))
  assert ours == saved_residual_shapes()

"""Building blocks shared by the T5 and decoder-only networks.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds logical axis names
("vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"); the trainer maps them to mesh axes
with `nnx.logical_axis_rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import math

from flax import nnx
import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
LogicalAxes = tuple[str | None, ...]


def logical_param(value: jax.Array, names: LogicalAxes) -> nnx.Param:
  """Wraps `value` in an `nnx.Param` annotated with logical axis `names`.

  Under a mesh (`jax.set_mesh`) the value is sharded at creation, as flax 0.12 does by default;
  without one it stays where it is, so models can be built on a single device with no mesh.
  """
  if len(names) != value.ndim:
    raise ValueError(f"{len(names)} axis names {names} for a parameter of shape {value.shape}")
  eager = nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty
  return nnx.Param(value, out_sharding=names, eager_sharding=eager)


def logical_variable(variable_type: type[nnx.Variable], value: jax.Array,
                     names: LogicalAxes) -> nnx.Variable:
  """`logical_param` for any variable type (e.g. the frozen or adapter variables of `lora.py`)."""
  if len(names) != value.ndim:
    raise ValueError(f"{len(names)} axis names {names} for a variable of shape {value.shape}")
  eager = nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty
  return variable_type(value, out_sharding=tuple(names), eager_sharding=eager)


def variance_scaling_init(scale: float, num_in_axes: int, distribution: str) -> Initializer:
  """Fan-in variance scaling over the first `num_in_axes` axes of a kernel."""

  def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype) -> jax.Array:
    in_axes = tuple(range(num_in_axes))
    out_axes = tuple(range(num_in_axes, len(shape)))
    return jax.nn.initializers.variance_scaling(
        scale, "fan_in", distribution, in_axis=in_axes, out_axis=out_axes)(key, shape, dtype)

  return init


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout; the identity when `rng` is None or `rate` is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_rng(rng: jax.Array | None, num: int) -> list[jax.Array | None]:
  """Splits a dropout key into `num` keys, or returns `num` Nones when there is no key."""
  if rng is None:
    return [None] * num
  return list(jax.random.split(rng, num))


# Rematerialization policies by name (gin: `T5Config.remat_policy`): what each layer keeps from
# its forward pass for the backward pass; the rest is recomputed. "none" keeps everything.
# Projections run inside `contract`'s custom VJP, where the dot policies do not see a dot_general,
# so their outputs are also saved by name (PROJECTION_NAME; they are dots without batch dims).
PROJECTION_NAME = "projection"
_SAVE_PROJECTIONS = jax.checkpoint_policies.save_only_these_names(PROJECTION_NAME)
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the layer's input
    # Keep matmul outputs, recompute the rest.
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_saveable, _SAVE_PROJECTIONS),
    "dots_with_no_batch_dims": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _SAVE_PROJECTIONS),
}


def check_remat_policy(name: str) -> None:
  """Raises on a rematerialization policy name that is not in REMAT_POLICIES."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={name!r}; expected one of {sorted(REMAT_POLICIES)}")


# Logical axes of the activations between layers (rows over the batch axes, the model dimension
# whole) and of the logits; partitioning.DEFAULT_RULES maps them to mesh axes.
ACTIVATION_AXES: LogicalAxes = ("batch", "length", "activation_embed")
LOGITS_AXES: LogicalAxes = ("batch", "length", "vocab")


def constrain(x: jax.Array, names: LogicalAxes) -> jax.Array:
  """Pins an activation's sharding by logical axis names (a no-op outside the trainer's rules).

  Without such hints XLA may choose to gather a whole [B, L, ...] activation (or the logits)
  onto every device of an FSDP mesh, where only its rows are needed.
  """
  return nn.with_logical_constraint(x, names)


def call_layer(layer: nnx.Module, *args, remat_policy: str = "none") -> jax.Array:
  """`layer(*args)`, rematerialized in the backward pass as `remat_policy` says; the output
  is constrained to ACTIVATION_AXES."""
  if remat_policy == "none":
    return constrain(layer(*args), ACTIVATION_AXES)
  check_remat_policy(remat_policy)
  out = nnx.remat(lambda module, *a: module(*a), policy=REMAT_POLICIES[remat_policy])(layer, *args)
  return constrain(out, ACTIVATION_AXES)


class RMSNorm(nnx.Module):
  """T5 layer norm: scale by the root mean square, no mean subtraction, no bias."""

  def __init__(self, features: int, *, epsilon: float = 1e-6, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32):
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = logical_param(jnp.ones((features,), param_dtype), ("embed",))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    # The variance is taken in float32 whatever the activation dtype, as in T5.
    x_f32 = x_BxLxD.astype(jnp.float32)
    mean_sq_BxLx1 = jnp.mean(jnp.square(x_f32), axis=-1, keepdims=True)
    normed = x_f32 * jax.lax.rsqrt(mean_sq_BxLx1 + self.epsilon)
    scale = self.scale[...].astype(self.dtype)
    return normed.astype(self.dtype) * scale.reshape((1,) * (normed.ndim - 1) + scale.shape)


class Embed(nnx.Module):
  """Token embedding table of shape [vocab, embed]."""

  def __init__(self, num_embeddings: int, features: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    # T5 initializes embeddings with unit variance and never rescales them by sqrt(d_model).
    table = jax.random.normal(rngs.params(), (num_embeddings, features), param_dtype)
    self.embedding = logical_param(table, ("vocab", "embed"))

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tokens_BxL, axis=0).astype(self.dtype)

  def attend(self, x_BxLxD: jax.Array) -> jax.Array:
    """Logits [B, L, vocab] of `x_BxLxD` against the table (an output head tied to the input)."""
    table_VxD = self.embedding[...].astype(self.dtype)
    return jnp.einsum("bld,vd->blv", x_BxLxD.astype(self.dtype), table_VxD)


class DenseGeneral(nnx.Module):
  """Bias-free projection contracting the trailing `in_shape` axes of the input.

  The kernel has shape `in_shape + out_shape`, e.g. [embed, heads, kv] for a query projection
  and [heads, kv, embed] for an attention output projection.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], axis_names: LogicalAxes,
               *, kernel_init: Initializer | None = None, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.num_in = len(in_shape)
    self.dtype = dtype
    shape = tuple(in_shape) + tuple(out_shape)
    if kernel_init is None:
      kernel_init = variance_scaling_init(1.0, self.num_in, "truncated_normal")
    self.kernel = logical_param(kernel_init(rngs.params(), shape, param_dtype), axis_names)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.dtype)
    y = contract(x.astype(self.dtype), kernel, self.num_in)
    return checkpoint_name(y, PROJECTION_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract(x: jax.Array, kernel: jax.Array, num_in: int) -> jax.Array:
  """`jnp.tensordot(x, kernel, num_in)`, with a backward pass that transposes the input, not the gradient.

  Left to autodiff, XLA:CPU computes a kernel's gradient as dy^T x: it transposes the output
  gradient, which is the larger operand for up-projections (a [tokens, d_ff] array in the
  feed-forward block) and is fused into the activation's backward as a slow strided write.
  Writing the gradient as x^T dy transposes the input instead; the math is the same.
  """
  return jnp.tensordot(x, kernel, axes=num_in)


def _contract_fwd(x, kernel, num_in):
  return contract(x, kernel, num_in), (x, kernel)


def _contract_bwd(num_in, residuals, dy):
  x, kernel = residuals
  in_size = math.prod(kernel.shape[:num_in])
  x_NxI = x.reshape(-1, in_size)
  dy_NxO = dy.reshape(x_NxI.shape[0], -1)
  kernel_IxO = kernel.reshape(in_size, -1)
  dx = (dy_NxO @ kernel_IxO.T).reshape(x.shape)
  dkernel = (x_NxI.T @ dy_NxO).reshape(kernel.shape)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


contract.defvjp(_contract_fwd, _contract_bwd)


def _gelu_exact(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=True)


# Feed-forward activations by their Hugging Face names (`transformers.activations.ACT2FN`):
# "gelu" is the exact erf form, "gelu_new" the tanh approximation T5 v1.1 was trained with.
MLP_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class Mlp(nnx.Module):
  """T5 feed-forward block: gated wo(act(wi_0 x) * wi_1 x) (v1.1) or plain wo(act(wi x)) (v1.0)."""

  def __init__(self, d_model: int, d_ff: int, *, activation: str = "gelu_new", gated: bool = True,
               dropout_rate: float = 0.0, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if activation not in MLP_ACTIVATIONS:
      raise ValueError(f"unknown MLP activation {activation!r}; expected one of {sorted(MLP_ACTIVATIONS)}")
    self.activation = activation
    self.gated = gated
    self.dropout_rate = dropout_rate
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if gated:
      self.wi_0 = DenseGeneral((d_model,), (d_ff,), ("embed", "mlp"), **kw)
      self.wi_1 = DenseGeneral((d_model,), (d_ff,), ("embed", "mlp"), **kw)
    else:
      self.wi = DenseGeneral((d_model,), (d_ff,), ("embed", "mlp"), **kw)
    self.wo = DenseGeneral((d_ff,), (d_model,), ("mlp", "embed"), **kw)

  def __call__(self, x_BxLxD: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    act = MLP_ACTIVATIONS[self.activation]
    if self.gated:
      hidden_BxLxF = act(self.wi_0(x_BxLxD)) * self.wi_1(x_BxLxD)
    else:
      hidden_BxLxF = act(self.wi(x_BxLxD))
    hidden_BxLxF = dropout(hidden_BxLxF, self.dropout_rate, dropout_rng)
    return self.wo(hidden_BxLxF)


def attention_query_init(head_dim: int) -> Initializer:
  """Query kernel init with T5's 1/sqrt(head_dim) folded in (T5 does not scale logits)."""
  base = variance_scaling_init(1.0, 1, "truncated_normal")

  def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype) -> jax.Array:
    return base(key, shape, dtype) / jnp.asarray(math.sqrt(head_dim), dtype)

  return init

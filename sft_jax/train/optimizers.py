"""Optimizers and learning-rate schedules, bound by gin."""

from __future__ import annotations

import gin
import jax
import optax


@gin.configurable
def learning_rate_schedule(peak: float = 1e-3, warmup_steps: int = 100, total_steps: int = 1000,
                           decay: str = "cosine", end_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup to `peak`, then `decay` (cosine, linear, rsqrt or constant) to `end_fraction*peak`."""
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  decay_steps = max(total_steps - warmup_steps, 1)
  if decay == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end_fraction)
  elif decay == "linear":
    after = optax.linear_schedule(peak, peak * end_fraction, decay_steps)
  elif decay == "rsqrt":
    after = lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup_steps, 1))
  elif decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"learning_rate_schedule: unknown decay {decay!r}; expected cosine, linear, rsqrt or constant")
  return optax.join_schedules([warmup, after], [warmup_steps])


def _decay_mask(params):
  # Matrices decay; norm scales and other vectors do not.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


# Projection kernels whose module has this name contract two input axes ([heads, kv, embed]).
_TWO_INPUT_AXES = frozenset({"out"})
# Kernels Muon leaves to Adam: lookup tables and the vocabulary projection.
_ADAM_ONLY = frozenset({"embedding", "logits_dense"})


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def muon_dimension_numbers(params):
  """Muon's view of each parameter: a projection kernel as a [inputs, outputs] matrix, else None (Adam).

  A kernel is `in_shape + out_shape` (layers.DenseGeneral): one input axis, or two for an
  attention output projection. Embeddings, the logits projection and vectors go to Adam.
  """
  def spec(path, leaf):
    names = _path_names(path)
    if "kernel" not in names or _ADAM_ONLY.intersection(names) or leaf.ndim < 2:
      return None
    module = names[names.index("kernel") - 1]
    num_in = 2 if module in _TWO_INPUT_AXES and leaf.ndim >= 3 else 1
    return optax.contrib.MuonDimensionNumbers(tuple(range(num_in)), tuple(range(num_in, leaf.ndim)))
  return jax.tree_util.tree_map_with_path(spec, params)


@gin.configurable
def create_optimizer(schedule: optax.Schedule, name: str = "adamw", weight_decay: float = 0.01,
                     b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8,
                     clip_global_norm: float | None = 1.0, muon_rms: float = 0.2,
                     muon_beta: float = 0.95) -> optax.GradientTransformation:
  """AdamW, Adafactor or Muon on `schedule`, after optional global-norm clipping.

  Muon (optax.contrib.muon) replaces each projection kernel's Nesterov momentum (`muon_beta`)
  by its orthogonalization (Newton-Schulz; see `muon_dimension_numbers`), scaled by
  `muon_rms * sqrt(max(fan_in, fan_out))` so its updates are about as large as AdamW's and one
  schedule serves both. Embeddings, the logits projection and vectors take AdamW steps (`b1`,
  `b2`, Nesterov); optax gives that part no decay mask, so its vectors decay too.
  """
  if name == "muon":
    opt = optax.contrib.muon(schedule, beta=muon_beta, weight_decay=weight_decay, weight_decay_mask=_decay_mask,
                             adam_b1=b1, adam_b2=b2, adam_weight_decay=weight_decay,
                             muon_weight_dimension_numbers=muon_dimension_numbers, consistent_rms=muon_rms)
  elif name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
  elif name == "adafactor":
    opt = optax.adafactor(schedule, weight_decay_rate=weight_decay or None)
  else:
    raise ValueError(f"create_optimizer: unknown optimizer {name!r}; expected adamw, adafactor or muon")
  if clip_global_norm:
    opt = optax.chain(optax.clip_by_global_norm(clip_global_norm), opt)
  return opt

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


@gin.configurable
def create_optimizer(schedule: optax.Schedule, name: str = "adamw", weight_decay: float = 0.01,
                     b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8,
                     clip_global_norm: float | None = 1.0) -> optax.GradientTransformation:
  """AdamW or Adafactor on `schedule`, after optional global-norm clipping."""
  if name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
  elif name == "adafactor":
    opt = optax.adafactor(schedule, weight_decay_rate=weight_decay or None)
  else:
    raise ValueError(f"create_optimizer: unknown optimizer {name!r}; expected adamw or adafactor")
  if clip_global_norm:
    opt = optax.chain(optax.clip_by_global_norm(clip_global_norm), opt)
  return opt

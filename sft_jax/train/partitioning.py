"""Device mesh and logical-axis sharding rules.

Parameters name their axes logically ("embed", "mlp", "heads", ...); one table of
rules, bound by gin, maps those names to the mesh axes `data`, `fsdp` and
`tensor`. The same code runs on one CPU device (every axis of size 1) and on a
pod slice.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis. Batch is split over data and fsdp; weights are split
# over fsdp on their embedding side and over tensor on their heads/mlp/vocab side.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    # Grouped-query attention has few key/value heads (often 8, or 1-2): replicated, since the
    # tensor axis rarely divides them; a run whose tensor size does may map them to "tensor".
    ("kv_heads", None),
    ("kv", None),
    # Byte and small vocabularies do not divide over devices; large models map vocab to tensor.
    ("vocab", None),
    ("relpos_buckets", None),
)


@gin.configurable
def create_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
                devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"create_mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"create_mesh: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"create_mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {len(devices)} devices")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@gin.configurable
def logical_axis_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
  """The logical-to-mesh rules table of a run (gin may replace it)."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_to_sharding(logical_specs: Any, mesh: jax.sharding.Mesh,
                        rules: Sequence[tuple[str, Any]]) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of [batch, length] input arrays: rows over (data, fsdp)."""
  return NamedSharding(mesh, P(("data", "fsdp"), None))


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}

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
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis. Batch is split over data and fsdp; weights are split
# over fsdp on their embedding side and over tensor on their heads/mlp/vocab side.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    # The model dimension of activations between layers stays whole (weights' "embed" is split).
    ("activation_embed", None),
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
    ("lora_rank", None),  # LoRA adapters' rank axis (models/lora.py): small, replicated
)


GRANULES = ("slice", "process")


def _resolve_sizes(sizes: list[int], num_devices: int, what: str) -> list[int]:
  """Replaces a -1 in `sizes` by what the other sizes leave of `num_devices`, and checks the product."""
  if sizes.count(-1) > 1:
    raise ValueError(f"create_mesh: at most one of data, fsdp, tensor may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"create_mesh: {num_devices} {what} are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"create_mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {num_devices} {what}")
  return sizes


@gin.configurable
def create_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, dcn_data: int = 1, dcn_fsdp: int = 1,
                granule: str = "slice", devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (the rest).

  Multi-slice TPU (or multi-node GPU, `granule="process"`): `dcn_data` and `dcn_fsdp` say how
  many of the `data` and `fsdp` groups lie in different slices (hosts), joined by the slower
  data-center network; the rest of each axis, and all of `tensor`, stays within a slice's
  fast interconnect (ICI, NVLink). `data` and `fsdp` are the whole axes, DCN part included.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = _resolve_sizes([data, fsdp, tensor], len(devices), "devices")
  axis_types = (AxisType.Auto,) * 3
  if dcn_data == dcn_fsdp == 1:
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
  if granule not in GRANULES:
    raise ValueError(f"create_mesh: granule={granule!r}; expected one of {GRANULES}")
  dcn = [dcn_data, dcn_fsdp, 1]
  if any(size % parts for size, parts in zip(sizes, dcn)):
    raise ValueError(f"create_mesh: dcn_data={dcn_data}, dcn_fsdp={dcn_fsdp} must divide data={sizes[0]}, "
                     f"fsdp={sizes[1]}")
  ici = [size // parts for size, parts in zip(sizes, dcn)]
  device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=granule == "process")
  return jax.sharding.Mesh(device_array, MESH_AXES, axis_types=axis_types)


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

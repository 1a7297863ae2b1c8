"""Joining the processes of a multi-host run into one JAX runtime.

`initialize` runs before anything touches a device. Each of the coordinator address, the
number of processes and this process's id comes from gin (`distributed.initialize.*`), else
from the environment (`JAX_COORDINATOR_ADDRESS`, read by JAX itself; `JAX_NUM_PROCESSES` and
`JAX_PROCESS_ID`, read here), else from JAX's cluster detection (Cloud TPU VMs and GKE TPU
slices, SLURM, Open MPI, Kubernetes). When none of them names a coordinator the run is a
single process and nothing is initialized.

`cpu_devices` splits each process's CPU into that many JAX devices, which the mesh then spans
like any others, each with its share of the batch: a CPU host can run a multi-device mesh
(and its collectives) without simulated-device flags. Whether it trains faster than one
device depends on the host; `benchmarks/cpu_devices.py` measures it. It has no effect on TPU
and GPU devices.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import gin
import jax


def _from_env(value: int | None, name: str) -> int | None:
  if value is not None or name not in os.environ:
    return value
  try:
    return int(os.environ[name])
  except ValueError:
    raise ValueError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


@gin.configurable(module="distributed")
def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               enabled: bool = True, cpu_devices: int | None = None) -> bool:
  """Initializes jax.distributed when the run spans processes; returns whether it is initialized."""
  if cpu_devices is not None:
    if cpu_devices < 1:
      raise ValueError(f"distributed.initialize.cpu_devices={cpu_devices}; expected a positive count")
    # JAX raises if a backend already started: this must run before anything touches a device.
    jax.config.update("jax_num_cpu_devices", cpu_devices)
  if not enabled or jax.distributed.is_initialized():
    return jax.distributed.is_initialized()
  # Collectives between CPU processes go through gloo (the default CPU client has none);
  # the setting only affects the CPU backend, so it is harmless on TPU and GPU hosts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  num_processes = _from_env(num_processes, "JAX_NUM_PROCESSES")
  process_id = _from_env(process_id, "JAX_PROCESS_ID")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids)
  except ValueError as e:
    # No address given and JAX's detection found no cluster: a single-process run.
    nothing_given = coordinator_address is None and num_processes is None and process_id is None
    if nothing_given and "coordinator_address should be defined" in str(e):
      return False
    raise
  logging.info("process %d of %d: %d local devices of %d", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True

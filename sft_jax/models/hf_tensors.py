"""Safetensors directories read by memory map, and the layout map of one parameter.

Tensors are read through memory maps of the safetensors layout rather than
`safetensors.safe_open(framework="np")`: numpy has no bfloat16, so that API raises on bf16
checkpoints ("data type 'bfloat16' not understood"), and its slices of other dtypes cost a copy.
Nothing here knows a model; `hf_t5` and `hf_llama` list their parameters as `TensorMap`s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any, Sequence

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


class SafetensorsDir:
  """The tensors of a directory's model.safetensors or sharded index, read lazily by memory map."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    index_path = os.path.join(hf_dir, INDEX_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(hf_dir, SINGLE_FILE)):
      files = [SINGLE_FILE]
    else:
      raise FileNotFoundError(f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors are read)")
    self._entries: dict[str, tuple[str, dict, int]] = {}
    for name in files:
      path = os.path.join(hf_dir, name)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{index_path}: lists {name}, which is missing")
      with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
      header.pop("__metadata__", None)
      for tensor, entry in header.items():
        if entry["dtype"] not in _DTYPES:
          raise ValueError(f"{path}: tensor {tensor} has unsupported dtype {entry['dtype']}")
        self._entries[tensor] = (path, entry, 8 + header_len)

  def names(self) -> list[str]:
    """All tensor names, sorted."""
    return sorted(self._entries)

  def file_of(self, name: str) -> str:
    """The file holding tensor `name`."""
    return self._entries[name][0]

  def shape(self, name: str) -> tuple[int, ...]:
    """The stored shape of tensor `name`."""
    return tuple(self._entries[name][1]["shape"])

  def view(self, name: str) -> np.ndarray:
    """A read-only memory map of tensor `name` (no bytes are read until it is indexed)."""
    path, entry, data_start = self._entries[name]
    begin, _ = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if not shape or 0 in shape:
      return np.zeros(shape, _DTYPES[entry["dtype"]])
    return np.memmap(path, dtype=_DTYPES[entry["dtype"]], mode="r", offset=data_start + begin,
                     shape=shape)

  def equal(self, a: str, b: str) -> bool:
    """Whether tensors `a` and `b` have the same shape and values (compared 64 MiB at a time)."""
    if self.shape(a) != self.shape(b):
      return False
    x, y = self.view(a), self.view(b)
    if x.ndim == 0 or len(x) == 0:
      return bool(np.array_equal(x, y))
    rows = max(1, (64 << 20) // max(1, x[0].nbytes))
    return all(np.array_equal(x[i:i + rows], y[i:i + rows]) for i in range(0, len(x), rows))


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One parameter: sft_jax value == hf_tensor.reshape(split).transpose(perm)."""
  hf_name: str
  path: tuple[str | int, ...]  # the parameter's path in the nnx state, e.g. ("decoder_norm", "scale")
  hf_shape: tuple[int, ...]  # as transformers stores it
  split: tuple[int, ...]  # hf_shape with the heads axis split out, if any
  perm: tuple[int, ...]

  def to_sft(self, hf_view: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    """The slice `index` of the sft_jax parameter, read from the HF tensor."""
    hf_index = [slice(None)] * len(self.perm)
    for axis, source in enumerate(self.perm):
      hf_index[source] = index[axis]
    return np.transpose(hf_view.reshape(self.split)[tuple(hf_index)], self.perm)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """The HF tensor of a whole sft_jax parameter."""
    return np.ascontiguousarray(np.transpose(value, np.argsort(self.perm)).reshape(self.hf_shape))


def vector(hf_name: str, path: tuple[str | int, ...], size: int) -> TensorMap:
  """A 1-d tensor stored the same way by both (norm scales, unsplit biases)."""
  return TensorMap(hf_name, path, (size,), (size,), (0,))


def linear(hf_name: str, path: tuple[str | int, ...], out_features: int, in_features: int) -> TensorMap:
  """An `nn.Linear` weight [out, in] as a DenseGeneral kernel [in, out]."""
  return TensorMap(hf_name, path, (out_features, in_features), (out_features, in_features), (1, 0))


def heads_in(hf_name: str, path: tuple[str | int, ...], heads: int, head_dim: int, d_model: int) -> TensorMap:
  """A q/k/v weight [heads * head_dim, d_model] as a kernel [d_model, heads, head_dim]."""
  return TensorMap(hf_name, path, (heads * head_dim, d_model), (heads, head_dim, d_model), (2, 0, 1))


def heads_out(hf_name: str, path: tuple[str | int, ...], heads: int, head_dim: int, d_model: int) -> TensorMap:
  """An attention output weight [d_model, heads * head_dim] as a kernel [heads, head_dim, d_model]."""
  return TensorMap(hf_name, path, (d_model, heads * head_dim), (d_model, heads, head_dim), (1, 2, 0))


def state_path(key_path: Sequence[Any]) -> tuple[str | int, ...]:
  """A pytree key path of an nnx.State leaf as the plain path of its parameter."""
  out = []
  for key in key_path:
    name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
    out.append(name)
  return tuple(out[:-1]) if out and out[-1] == "value" else tuple(out)


def plan_shards(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
  """Consecutive groups of tensor indices whose byte sizes fill files of at most `max_shard_bytes`."""
  shards, current, used = [], [], 0
  for i, size in enumerate(sizes):
    if current and used + size > max_shard_bytes:
      shards.append(current)
      current, used = [], 0
    current.append(i)
    used += size
  return shards + [current] if current else shards

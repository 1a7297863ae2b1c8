"""Ahead-of-time memory and FLOPs plan of the train step, on abstract arrays.

Builds the run's train state and a packed batch as `jax.ShapeDtypeStruct`s carrying the
shardings the train loop would give them (nothing is allocated), lowers and compiles the real
`step.train_step` with the loop's in/out shardings and donation, and reads per-device bytes off
the shardings and XLA's `memory_analysis()` and FLOPs off its `cost_analysis()`. Next to them
stand the analytic figures: parameter and optimizer bytes as size x itemsize / sharding factor
per leaf, and FLOPs as 6 x matmul parameters x tokens plus the attention score/value matmuls.

On simulated CPU devices (`--xla_force_host_platform_device_count=N`) the parameter, optimizer
and batch bytes are exact for any backend; temporaries come from the CPU compiler's buffer
assignment, whose fusion, scheduling and precision choices differ from TPU/GPU (it upcasts
bfloat16 dots to float32, for one), so read them as a rough, probably high, estimate.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from sft_jax import config as config_lib
from sft_jax.models import decoder, t5
from sft_jax.train import optimizers, partitioning
from sft_jax.train import state as state_lib
from sft_jax.train.step import StepConfig, TrainState, train_step

GIB = 1 << 30
ENCODER_DECODER_FEATURES = (
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
    "decoder_positions", "decoder_loss_weights",
)  # sft_jax.data.packing.FEATURES (not imported: data/ pulls in TensorFlow)
DECODER_ONLY_FEATURES = (
    "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
    "decoder_positions", "decoder_loss_weights",
)  # sft_jax.data.packing.DECODER_FEATURES


# ---- Flags ------------------------------------------------------------------------------------

def parse_mesh(text: str) -> dict[str, int]:
  """'data:1,fsdp:8,tensor:1' -> {'data': 1, 'fsdp': 8, 'tensor': 1}; unnamed axes are 1."""
  sizes = dict.fromkeys(partitioning.MESH_AXES, 1)
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    if name not in sizes or not size.isdigit() or int(size) < 1:
      raise ValueError(f"--mesh={text!r}: expected comma-separated AXIS:SIZE with AXIS in "
                       f"{partitioning.MESH_AXES} and SIZE a positive integer")
    sizes[name] = int(size)
  return sizes


def parse_seq(text: str, encoder_decoder: bool) -> tuple[int, int | None]:
  """(input_length, target_length): '512:128' for an encoder-decoder ('512' is 512:512),
  '2048' for a decoder-only model (target_length None)."""
  parts = [int(p) for p in str(text).split(":")]
  if encoder_decoder:
    if len(parts) not in (1, 2):
      raise ValueError(f"--seq={text!r}: expected INPUTS:TARGETS lengths for an encoder-decoder")
    return parts[0], parts[-1]
  if len(parts) != 1:
    raise ValueError(f"--seq={text!r}: a decoder-only model takes one length")
  return parts[0], None


def with_overrides(model: Any, remat_policy: str | None = None, dtype: str | None = None,
                   param_dtype: str | None = None) -> Any:
  """A copy of `model` whose config has the given remat policy / dtypes (None keeps the config's)."""
  changes = {k: v for k, v in dict(remat_policy=remat_policy, dtype=dtype, param_dtype=param_dtype).items()
             if v is not None}
  if not changes:
    return model
  model = copy.copy(model)
  model.config = dataclasses.replace(model.config, **changes)
  return model


# ---- Abstract state and batch ------------------------------------------------------------------

def abstract_train_state(model: Any, optimizer: optax.GradientTransformation, seed: int,
                         mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]]) -> tuple[Any, TrainState]:
  """(graphdef, TrainState of ShapeDtypeStructs): parameters sharded as `state.abstract_params`
  says, the optimizer state following them (as `state.init_train_state` lays it out), a
  replicated step counter."""
  graphdef, params, shardings = state_lib.abstract_params(model, seed, mesh, rules)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
  opt_shapes = jax.eval_shape(optimizer.init, params)
  opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           opt_shapes, state_lib.opt_state_shardings(optimizer, params, mesh))
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return graphdef, TrainState(step=step, params=params, opt_state=opt_state)


def is_encoder_decoder(model: Any) -> bool:
  """True for T5 (packed inputs and targets), False for a decoder-only model; decided by class."""
  if isinstance(model, t5.EncoderDecoderModel):
    return True
  if isinstance(model, decoder.DecoderOnlyModel):
    return False
  raise TypeError(f"memory plan: unknown model class {type(model).__name__}; expected "
                  f"t5.EncoderDecoderModel or decoder.DecoderOnlyModel")


def abstract_batch(encoder_decoder: bool, batch_size: int, input_length: int, target_length: int | None,
                   mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The packed features the loop feeds the step, int32 [batch, length], rows over (data, fsdp)."""
  sharding = partitioning.batch_sharding(mesh)
  if encoder_decoder:
    lengths = {k: input_length if k.startswith("encoder") else target_length for k in ENCODER_DECODER_FEATURES}
  else:
    lengths = dict.fromkeys(DECODER_ONLY_FEATURES, input_length)
  return {k: jax.ShapeDtypeStruct((batch_size, n), jnp.int32, sharding=sharding) for k, n in lengths.items()}


# ---- Bytes --------------------------------------------------------------------------------------

def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (device 0's shard shapes)."""
  total = 0
  for x in jax.tree.leaves(tree):
    # jit refuses uneven splits, so every device holds this shape.
    total += math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
  return total


def sharding_factor(spec: jax.sharding.PartitionSpec, mesh: jax.sharding.Mesh) -> int:
  """Number of pieces a PartitionSpec cuts an array into (product of the mesh axes it names)."""
  axes = [a for entry in spec if entry is not None for a in (entry if isinstance(entry, tuple) else (entry,))]
  return math.prod(mesh.shape[a] for a in axes)


def analytic_bytes(tree: Any, mesh: jax.sharding.Mesh) -> int:
  """Sum over leaves of size x itemsize / sharding factor: the bytes per device if every split is even."""
  total = 0
  for x in jax.tree.leaves(tree):
    spec = x.sharding.spec if isinstance(x.sharding, NamedSharding) else jax.sharding.PartitionSpec()
    total += x.size * np.dtype(x.dtype).itemsize / sharding_factor(spec, mesh)
  return int(math.ceil(total))


def total_bytes(tree: Any) -> int:
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# ---- FLOPs --------------------------------------------------------------------------------------

def _path_head(path: tuple) -> str:
  key = path[0]
  return str(getattr(key, "key", getattr(key, "name", key)))


def analytic_flops(params: Any, config: Any, encoder_decoder: bool, batch_size: int, input_length: int,
                   target_length: int | None) -> dict[str, float]:
  """Forward+backward FLOPs of one step: matmul parameters x tokens, and the attention matmuls.

  `six_n_t` is the rule of thumb 6 x all parameters x tokens (tokens: input plus target slots).
  `matmul` counts 6 x (parameters a token passes through a matmul: not the embedding lookup,
  unless tied as the head) x that stack's tokens, 8 x for layer parameters under remat "full"
  (the forward runs twice); `attention` counts QK^T and AV (forward 4 x B x Q x K x heads x
  head_dim per layer, dense over the padded length as the XLA einsum computes it; x 3 or x 4).
  """
  remat = config.remat_policy == "full"
  tied = getattr(config, "tie_word_embeddings", False)
  enc_tokens = batch_size * input_length if encoder_decoder else 0
  dec_tokens = batch_size * (target_length if encoder_decoder else input_length)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  matmul = 0.0
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    head = _path_head(path)
    if head == "token_embedder" and not tied:
      continue
    tokens = enc_tokens if head == "encoder" else dec_tokens
    in_layers = head in ("encoder", "decoder", "layers") and "logits_dense" not in jax.tree_util.keystr(path)
    matmul += (8 if remat and in_layers else 6) * x.size * tokens
  per_layer = (4 if remat else 3) * 4 * config.num_heads * config.head_dim * batch_size  # x Q x K
  if encoder_decoder:
    s, t = input_length, target_length
    attention = per_layer * (config.num_encoder_layers * s * s + config.num_decoder_layers * (t * t + t * s))
  else:
    attention = per_layer * config.num_layers * input_length * input_length
  return {"six_n_t": 6.0 * n_params * (enc_tokens + dec_tokens), "matmul": matmul,
          "attention": float(attention), "total": matmul + attention}


# ---- The plan -----------------------------------------------------------------------------------

def plan_train_step(model: Any, optimizer: optax.GradientTransformation, schedule: optax.Schedule, *,
                    mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]], batch_size: int,
                    input_length: int, target_length: int | None = None, num_microbatches: int = 1,
                    loss_normalization: str = "tokens", z_loss: float = 1e-4, label_smoothing: float = 0.0,
                    seed: int = 0, compiler_options: Mapping[str, Any] | None = None,
                    device_memory_gib: float | None = None) -> dict[str, Any]:
  """Compiles the train step ahead of time on abstract arrays and reports its per-device memory and FLOPs."""
  encoder_decoder = is_encoder_decoder(model)
  if encoder_decoder and target_length is None:
    raise ValueError("an encoder-decoder model needs a target_length")
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % batch_shards:
    raise ValueError(f"batch={batch_size} rows do not split over data*fsdp={batch_shards} devices")
  if batch_size % num_microbatches:
    raise ValueError(f"batch={batch_size} rows do not split into num_microbatches={num_microbatches}")
  started = time.perf_counter()
  graphdef, state = abstract_train_state(model, optimizer, seed, mesh, rules)
  batch = abstract_batch(encoder_decoder, batch_size, input_length, target_length, mesh)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  step_fn = jax.jit(
      functools.partial(train_step, StepConfig(graphdef, model, optimizer, schedule,
                                               label_smoothing=label_smoothing, z_loss=z_loss,
                                               loss_normalization=loss_normalization,
                                               num_microbatches=num_microbatches, dropout_seed=seed)),
      in_shardings=(state_shardings, partitioning.batch_sharding(mesh)),
      out_shardings=(state_shardings, None),
      donate_argnums=0,
  )  # as sft_jax.train.loop builds it
  with state_lib.mesh_context(mesh, rules):
    lowered = step_fn.lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile(dict(compiler_options or {}))
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost

  devices = mesh.size
  xla = {k: int(getattr(memory, f"{k}_size_in_bytes", 0) or 0)
         for k in ("argument", "output", "alias", "temp", "generated_code")}
  # Live at the step's peak: its inputs, its outputs not written over donated inputs, its scratch.
  xla["peak_estimate"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
  flops = analytic_flops(state.params, model.config, encoder_decoder, batch_size, input_length, target_length)
  report = {
      "model": f"{type(model).__name__}({type(model.config).__name__})",
      "mesh": dict(mesh.shape), "devices": devices, "platform": mesh.devices.flat[0].platform,
      "batch": batch_size, "input_length": input_length, "target_length": target_length,
      "num_microbatches": num_microbatches, "remat_policy": model.config.remat_policy,
      "dtype": model.config.dtype, "param_dtype": model.config.param_dtype,
      "param_count": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "params": _bytes_entry(state.params, mesh),
      "opt_state": _bytes_entry(state.opt_state, mesh),
      "batch_bytes": _bytes_entry(batch, mesh),
      "xla_memory": xla,
      # cost_analysis of an SPMD-partitioned executable describes one device's program.
      "flops": {"xla_per_device": float(cost.get("flops", 0.0)),
                **{f"analytic_{k}_per_device": v / devices for k, v in flops.items()}},
      "seconds": {"lower": round(lowered_at - started, 1), "compile": round(compiled_at - lowered_at, 1)},
  }
  report["flops"]["xla_over_analytic"] = (report["flops"]["xla_per_device"]
                                          / max(report["flops"]["analytic_total_per_device"], 1.0))
  report["device_memory_gib"] = device_memory_gib
  report["fits"] = None if device_memory_gib is None else xla["peak_estimate"] <= device_memory_gib * GIB
  return report


def _bytes_entry(tree: Any, mesh: jax.sharding.Mesh) -> dict[str, int]:
  return {"per_device": shard_bytes(tree), "analytic_per_device": analytic_bytes(tree, mesh),
          "total": total_bytes(tree)}


# ---- From gin ---------------------------------------------------------------------------------

def _train_binding(name: str, default: Any) -> Any:
  """`train.<name>` as a run gin file binds it, else `default` (the loop need not be imported)."""
  try:
    return gin.query_parameter(f"train.{name}")
  except ValueError:
    return default


def plan_from_gin(mesh_sizes: Mapping[str, int], batch_size: int | None = None, seq: str | None = None, *,
                  num_microbatches: int | None = None, remat_policy: str | None = None,
                  dtype: str | None = None, param_dtype: str | None = None,
                  device_memory_gib: float | None = None,
                  compiler_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """`plan_train_step` for the model bound to %MODEL and the optimizer gin configures.

  Batch size, lengths, microbatches and loss settings default to a run file's `train.*`
  bindings when one was parsed; arguments given here win.
  """
  model = with_overrides(config_lib.query_bound_value("%MODEL"), remat_policy, dtype, param_dtype)
  encoder_decoder = is_encoder_decoder(model)
  if seq is None:
    seq = (f"{_train_binding('input_length', 512)}:{_train_binding('target_length', 128)}"
           # packing.py: decoder-only rows are target_length long.
           if encoder_decoder else str(_train_binding("target_length", 2048)))
  input_length, target_length = parse_seq(seq, encoder_decoder)
  schedule = optimizers.learning_rate_schedule()
  return plan_train_step(
      model, optimizers.create_optimizer(schedule), schedule,
      mesh=partitioning.create_mesh(**mesh_sizes), rules=partitioning.logical_axis_rules(),
      batch_size=batch_size or _train_binding("batch_size", 16), input_length=input_length,
      target_length=target_length,
      num_microbatches=num_microbatches or _train_binding("num_microbatches", 1),
      loss_normalization=_train_binding("loss_normalization", "tokens"),
      z_loss=_train_binding("z_loss", 1e-4), label_smoothing=_train_binding("label_smoothing", 0.0),
      seed=_train_binding("seed", 0), compiler_options=compiler_options,
      device_memory_gib=device_memory_gib)


# ---- Output -------------------------------------------------------------------------------------

def _gib(n: float) -> str:
  """Bytes in the largest binary unit that keeps the number at least 1 (GiB at most)."""
  for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
    if n >= size:
      return f"{n / size:.3f} {unit}"
  return f"{n:.0f} B  "


def format_report(report: Mapping[str, Any]) -> str:
  """A readable table of a `plan_train_step` report."""
  p, o, b, x, f = (report[k] for k in ("params", "opt_state", "batch_bytes", "xla_memory", "flops"))
  seq = (f"{report['input_length']}:{report['target_length']}" if report["target_length"] is not None
         else str(report["input_length"]))
  lines = [
      f"{report['model']}: {report['param_count']:,} parameters ({report['param_dtype']}), "
      f"activations {report['dtype']}, remat {report['remat_policy']}",
      f"mesh {report['mesh']} ({report['devices']} {report['platform']} devices), batch {report['batch']} x seq {seq}, "
      f"{report['num_microbatches']} microbatch(es)",
      "",
      f"{'per device':<34}{'from shardings':>16}{'analytic':>16}",
      f"{'  parameters':<34}{_gib(p['per_device']):>16}{_gib(p['analytic_per_device']):>16}",
      f"{'  optimizer state':<34}{_gib(o['per_device']):>16}{_gib(o['analytic_per_device']):>16}",
      f"{'  batch':<34}{_gib(b['per_device']):>16}{_gib(b['analytic_per_device']):>16}",
      f"{'  (whole model: params, opt state)':<34}{_gib(p['total']):>16}{_gib(o['total']):>16}",
      "XLA memory_analysis (per device)",
      f"{'  arguments (state + batch)':<34}{_gib(x['argument']):>16}",
      f"{'  outputs':<34}{_gib(x['output']):>16}",
      f"{'  aliased (donated state)':<34}{_gib(x['alias']):>16}",
      f"{'  temporaries (activations etc.)':<34}{_gib(x['temp']):>16}",
      f"{'  peak = args + out - alias + temp':<34}{_gib(x['peak_estimate']):>16}",
      "FLOPs per step, per device",
      f"{'  XLA cost_analysis':<34}{f['xla_per_device']:>16.4g}",
      f"{'  analytic (matmul + attention)':<34}{f['analytic_total_per_device']:>16.4g}"
      f"   = {f['analytic_matmul_per_device']:.4g} + {f['analytic_attention_per_device']:.4g}",
      f"{'  6 x params x tokens':<34}{f['analytic_six_n_t_per_device']:>16.4g}",
      f"lower {report['seconds']['lower']} s, compile {report['seconds']['compile']} s",
  ]
  if report["device_memory_gib"] is not None:
    verdict = "yes" if report["fits"] else "NO"
    lines.append(f"fits in {report['device_memory_gib']:g} GiB per device? {verdict} "
                 f"(peak {_gib(x['peak_estimate'])})")
  return "\n".join(lines)

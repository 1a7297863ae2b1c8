"""Creating, sharding and restoring model parameters and train states on a mesh.

Parameters carry logical axis names; created under the mesh and the rules table,
flax resolves them to mesh axes, so the shardings of a whole state are read off
its abstract shapes before any weight is allocated.

"params" as returned by `abstract_params`, `init_params` and `restore_params` is the whole
model state (`nnx.merge(graphdef, params)` builds the network). A full fine-tune's model holds
nnx.Param only, all trained. A LoRA model (models/lora.py) holds trainable adapters
(lora.LoRAParam) and a frozen base (lora.FrozenParam, NF4-quantized or not): its TrainState
keeps the adapters in `params` (the optimizer sees only them) and the base in `frozen`, and its
checkpoints hold only the adapters and their optimizer state; the base comes from the run's
`init_checkpoint` (or `LoRAModel.base_checkpoint`, or a fresh initialization from the seed).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from sft_jax.models import lora
from sft_jax.train import checkpoints
from sft_jax.train.step import TrainState


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Enters the mesh and the logical axis rules that parameter creation reads."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    yield


def _concrete(sharding_tree: Any, mesh: jax.sharding.Mesh) -> Any:
  return jax.tree.map(lambda x: NamedSharding(mesh, x.sharding.spec), sharding_tree)


def abstract_params(model: Any, seed: int, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any, Any]:
  """(graphdef, abstract params, param shardings) of `model.init(seed)`, allocating nothing."""
  with mesh_context(mesh, rules):
    module = nnx.eval_shape(lambda: model.init(seed))
  graphdef, params, *rest = nnx.split(module, _model_filter(model), ...)
  if any(jax.tree.leaves(r) for r in rest):
    raise ValueError("the model holds non-parameter state; the trainer only handles nnx.Param")
  return graphdef, params, _concrete(params, mesh)


def _model_filter(model: Any) -> Any:
  """The variables a model's state consists of: nnx.Param, or a LoRA model's adapters and frozen base."""
  return (model.trainable, model.frozen) if lora.is_lora(model) else nnx.Param


def _latest_params(model_dir: str, model: Any, seed: int, mesh: jax.sharding.Mesh,
                   rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any]:
  """(graphdef, params) of the latest checkpoint of the model directory `model_dir`."""
  source = checkpoints.Checkpointer(model_dir)
  step = source.latest_step()
  if step is None:
    raise ValueError(f"init_checkpoint: no checkpoint in {source.directory}")
  try:
    return restore_params(source, step, model, seed, mesh, rules)
  finally:
    source.close()


def init_params(model: Any, seed: int, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
                base_checkpoint: str | None = None) -> tuple[Any, Any]:
  """(graphdef, params) of a freshly initialized model, created directly in their shardings.

  A LoRA model's base comes from `base_checkpoint` (or its own `base_checkpoint`) when given,
  with fresh adapters; a model directory of the base model (e.g. tools/convert_hf.py's output).
  """
  graphdef, _, shardings = abstract_params(model, seed, mesh, rules)
  if lora.is_lora(model) and (base_checkpoint := base_checkpoint or model.base_checkpoint):
    base_graphdef, base_params = _latest_params(base_checkpoint, model.base, seed, mesh, rules)
    adapt = lambda p: nnx.state(model.wrap(nnx.merge(base_graphdef, p), seed), _model_filter(model))
    with mesh_context(mesh, rules):
      return graphdef, jax.jit(adapt, out_shardings=shardings, donate_argnums=0)(base_params)
  with mesh_context(mesh, rules):
    params = jax.jit(lambda: nnx.state(model.init(seed), _model_filter(model)), out_shardings=shardings)()
  return graphdef, params


def trains_adapters_only(model: Any) -> bool:
  """Whether `model` trains adapters on a frozen base (LoRA): its checkpoints hold only them."""
  return lora.is_lora(model)


def split_trainable(model: Any, params: Any) -> tuple[Any, Any]:
  """(trainable, frozen) parts of a model state; frozen is None for a full fine-tune."""
  if not lora.is_lora(model):
    return params, None
  trainable, frozen = nnx.split_state(params, model.trainable, model.frozen)
  return trainable, frozen


LORA_BASE_FILE = "lora_base.json"


def lora_base(model: Any, init_checkpoint: str | None) -> str | None:
  """Where a LoRA model's frozen base comes from: `init_checkpoint`, else its `base_checkpoint`,
  else None (a fresh initialization from the seed)."""
  own = model.base_checkpoint
  if init_checkpoint and own and os.path.abspath(init_checkpoint) != os.path.abspath(own):
    raise ValueError(f"LoRA base: init_checkpoint={init_checkpoint!r} but LoRAModel.base_checkpoint={own!r}")
  return init_checkpoint or own


def record_lora_base(model_dir: str, model: Any, init_checkpoint: str | None) -> None:
  """Notes in a LoRA run's directory where its frozen base comes from (`lora_base`), so its
  adapter-only checkpoints restore onto the right base wherever they are evaluated."""
  base_checkpoint = lora_base(model, init_checkpoint)
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, LORA_BASE_FILE), "w") as f:
      json.dump({"base_checkpoint": os.path.abspath(base_checkpoint) if base_checkpoint else None}, f)


def recorded_lora_base(model_dir: str) -> str | None:
  """The base a LoRA run in `model_dir` recorded (`record_lora_base`), or None."""
  path = os.path.join(model_dir, LORA_BASE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["base_checkpoint"]


def model_params(state: TrainState) -> Any:
  """The whole model state of a train state (what `nnx.merge(graphdef, ...)` and evaluators take)."""
  return state.params if state.frozen is None else nnx.merge_state(state.params, state.frozen)


def opt_state_shardings(optimizer: optax.GradientTransformation, params: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shardings of `optimizer.init(params)`: each parameter-shaped leaf (Adam's mu and nu) as its
  parameter, anything else (step counts, Adafactor's factored rows and columns) replicated.

  `params` are live arrays or ShapeDtypeStructs carrying their shardings.
  """
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  shapes = jax.eval_shape(optimizer.init, params)
  # A partitioned optimizer (Muon's Adam part) holds empty MaskedNodes for the parameters it skips.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

  def sharding(leaf, param):
    if masked(leaf):
      return leaf
    return param.sharding if leaf.shape == param.shape else replicated
  return optax.tree_map_params(optimizer, sharding, shapes, params, transform_non_params=lambda _: replicated,
                               is_leaf=masked)


def _new_train_state(optimizer: optax.GradientTransformation, params: Any, mesh: jax.sharding.Mesh,
                     rules: Sequence[tuple[str, Any]]) -> TrainState:
  """Step 0 with a fresh optimizer state, every leaf committed to its sharding.

  Without explicit output shardings XLA replicates the optimizer's zeros on every device (they
  depend on no sharded input): Adam's two copies of the model whole on each device. An
  uncommitted leaf would also make the train step compile a second time.
  """
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = TrainState(step=replicated, params=shardings_of(params),
                         opt_state=opt_state_shardings(optimizer, params, mesh))
  create = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p)),
                   out_shardings=shardings)
  with mesh_context(mesh, rules):
    return create(params)


def init_train_state(model: Any, optimizer: optax.GradientTransformation, seed: int,
                     mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
                     init_checkpoint: str | None = None) -> tuple[Any, TrainState]:
  """(graphdef, step-0 train state); optimizer state follows the parameter shardings.

  With `init_checkpoint` (a model directory: a converted Hugging Face model or another run) the
  parameters are its latest checkpoint's instead of fresh ones; the optimizer starts anew.
  A LoRA model takes its frozen base from `init_checkpoint` and trains fresh adapters; its
  optimizer state covers the adapters only.
  """
  if lora.is_lora(model):
    graphdef, params = init_params(model, seed, mesh, rules, base_checkpoint=lora_base(model, init_checkpoint))
    trainable, frozen = split_trainable(model, params)
    return graphdef, _new_train_state(optimizer, trainable, mesh, rules).replace(frozen=frozen)
  if init_checkpoint is None:
    graphdef, params = init_params(model, seed, mesh, rules)
  else:
    graphdef, params = _latest_params(init_checkpoint, model, seed, mesh, rules)
  return graphdef, _new_train_state(optimizer, params, mesh, rules)


def shardings_of(tree: Any) -> Any:
  """The shardings of a tree of live arrays (used as jit in/out shardings)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of live arrays, as restore targets."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def save_train_state(checkpointer: checkpoints.Checkpointer, state: TrainState, data_state: dict,
                     metrics: dict[str, float] | None = None) -> None:
  """Saves `state` with its data position (and evaluation metrics, if any) at its own step."""
  step = int(jax.device_get(state.step))
  checkpointer.save(step, {"params": state.params, "opt_state": state.opt_state},
                    dict(data_state, step=step), metrics=metrics)


def restore_train_state(checkpointer: checkpoints.Checkpointer, step: int,
                        like: TrainState) -> tuple[TrainState, dict]:
  """Restores the train state saved at `step` onto the structure and shardings of `like`."""
  items, data_state = checkpointer.restore(
      step, {"params": abstract_like(like.params), "opt_state": abstract_like(like.opt_state)})
  step_array = jax.device_put(jnp.asarray(step, jnp.int32), like.step.sharding)
  state = TrainState(step=step_array, params=items["params"], opt_state=items["opt_state"], frozen=like.frozen)
  return state, data_state


def restore_params(checkpointer: checkpoints.Checkpointer, step: int, model: Any, seed: int,
                   mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any]:
  """(graphdef, params) of the checkpoint at `step`, without its optimizer state.

  A LoRA checkpoint holds adapters only: they are restored onto the base `init_params` builds.
  """
  if lora.is_lora(model):
    base = model.base_checkpoint or recorded_lora_base(os.path.dirname(checkpointer.directory))
    graphdef, params = init_params(model, seed, mesh, rules, base_checkpoint=base)
    trainable, frozen = split_trainable(model, params)
    items, _ = checkpointer.restore(step, {"params": abstract_like(trainable)})
    return graphdef, nnx.merge_state(items["params"], frozen)
  graphdef, params, shardings = abstract_params(model, seed, mesh, rules)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
  items, _ = checkpointer.restore(step, {"params": target})
  return graphdef, items["params"]

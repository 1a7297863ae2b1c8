"""Creating, sharding and restoring model parameters and train states on a mesh.

Parameters carry logical axis names; created under the mesh and the rules table,
flax resolves them to mesh axes, so the shardings of a whole state are read off
its abstract shapes before any weight is allocated.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

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
  graphdef, params, *rest = nnx.split(module, nnx.Param, ...)
  if any(jax.tree.leaves(r) for r in rest):
    raise ValueError("the model holds non-parameter state; the trainer only handles nnx.Param")
  return graphdef, params, _concrete(params, mesh)


def init_params(model: Any, seed: int, mesh: jax.sharding.Mesh,
                rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any]:
  """(graphdef, params) of a freshly initialized model, created directly in their shardings."""
  graphdef, _, shardings = abstract_params(model, seed, mesh, rules)
  with mesh_context(mesh, rules):
    params = jax.jit(lambda: nnx.state(model.init(seed), nnx.Param), out_shardings=shardings)()
  return graphdef, params


def init_train_state(model: Any, optimizer: optax.GradientTransformation, seed: int,
                     mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
                     init_checkpoint: str | None = None) -> tuple[Any, TrainState]:
  """(graphdef, step-0 train state); optimizer state follows the parameter shardings.

  With `init_checkpoint` (a model directory: a converted Hugging Face model or another run) the
  parameters are its latest checkpoint's instead of fresh ones; the optimizer starts anew.
  """
  if init_checkpoint is None:
    graphdef, params = init_params(model, seed, mesh, rules)
  else:
    source = checkpoints.Checkpointer(init_checkpoint)
    step = source.latest_step()
    if step is None:
      raise ValueError(f"init_checkpoint: no checkpoint in {source.directory}")
    graphdef, params = restore_params(source, step, model, seed, mesh, rules)
    source.close()
  # One jit builds the rest, so every leaf (the step counter too) comes out committed
  # to the mesh; an uncommitted leaf would make the train step compile a second time.
  create = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p)))
  with mesh_context(mesh, rules):
    return graphdef, create(params)


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
  state = TrainState(step=step_array, params=items["params"], opt_state=items["opt_state"])
  return state, data_state


def restore_params(checkpointer: checkpoints.Checkpointer, step: int, model: Any, seed: int,
                   mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any]:
  """(graphdef, params) of the checkpoint at `step`, without its optimizer state."""
  graphdef, params, shardings = abstract_params(model, seed, mesh, rules)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
  items, _ = checkpointer.restore(step, {"params": target})
  return graphdef, items["params"]

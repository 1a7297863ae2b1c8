"""One code path for every mesh: 3 train steps on 8 simulated CPU devices give the 1-device result.

The device count is fixed when JAX starts, so the meshes run in a child process with
`--xla_force_host_platform_device_count=8`; it prints one JSON line per mesh.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import json
import jax
import numpy as np
import optax
from sft_jax.data import packing
from sft_jax.models import t5
from sft_jax.train import partitioning
from sft_jax.train import state as state_lib
from sft_jax.train.step import StepConfig, train_step

assert jax.device_count() == 8
MODEL = t5.EncoderDecoderModel(t5.T5Config(vocab_size=256, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                           num_encoder_layers=1, num_decoder_layers=1))
# Vocab over tensor too, so the embedding and the head are split in both directions.
RULES = tuple((n, "tensor") if n == "vocab" else (n, a) for n, a in partitioning.DEFAULT_RULES)


def batches():
  rng = np.random.default_rng(0)
  out = []
  for _ in range(3):
    rows = []
    for r in range(8):
      pairs = [(rng.integers(3, 256, 3 + (r + k) % 7).astype(np.int32),
                rng.integers(3, 256, 1 + (r * k) % 6).astype(np.int32)) for k in range(2)]
      rows.append(packing.assemble_row(pairs, 24, 16))
    out.append({k: np.stack([row[k] for row in rows]) for k in packing.FEATURES})
  return out


for data, fsdp, tensor in [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]:
  devices = jax.devices()[:data * fsdp * tensor]
  mesh = partitioning.create_mesh(data=data, fsdp=fsdp, tensor=tensor, devices=devices)
  # SGD with momentum: parameter differences stay proportional to gradient differences (Adam's
  # first steps, lr * g / |g|, turn rounding in near-zero gradients into lr-sized differences).
  optimizer = optax.sgd(0.5, momentum=0.9)
  graphdef, state = state_lib.init_train_state(MODEL, optimizer, 0, mesh, RULES)
  shardings = state_lib.shardings_of(state)
  config = StepConfig(graphdef, MODEL, optimizer, optax.constant_schedule(0.5))
  step = jax.jit(lambda s, b: train_step(config, s, b), in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                 out_shardings=(shardings, None))
  losses = []
  with state_lib.mesh_context(mesh, RULES):
    for batch in batches():
      state, metrics = step(state, partitioning.global_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
  layer = state.params["encoder"]["layers"][0]
  kernels = {"wi_0": layer["mlp"]["wi_0"]["kernel"][...], "query": layer["attention"]["query"]["kernel"][...],
             "embedding": state.params["token_embedder"]["embedding"][...]}
  print(json.dumps({
      "mesh": [data, fsdp, tensor], "losses": losses,
      "params": {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(x).ravel().tolist()
                 for path, x in jax.tree_util.tree_leaves_with_path(state.params)},
      "specs": {k: [a if a is None or isinstance(a, str) else list(a) for a in v.sharding.spec]
                for k, v in kernels.items()},
      "shard_shapes": {k: list(v.addressable_shards[0].data.shape) for k, v in kernels.items()},
      # Bytes on device 0: SGD momentum keeps one trace per parameter, split the same way.
      "device_bytes": {k: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
                       for k, tree in (("params", state.params), ("opt_state", state.opt_state))},
      "shapes": {k: list(v.shape) for k, v in kernels.items()},
  }), flush=True)
"""


@pytest.fixture(scope="module")
def mesh_runs():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  return {tuple(r["mesh"]): r for r in runs}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_loss_and_parameters_after_three_steps_equal_one_device(mesh_runs, mesh):
  single, sharded = mesh_runs[(1, 1, 1)], mesh_runs[mesh]
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
  assert single["losses"][0] != single["losses"][-1]  # the steps really trained
  assert sharded["params"].keys() == single["params"].keys()
  for name, values in single["params"].items():
    np.testing.assert_allclose(sharded["params"][name], values, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_parameters_are_sharded_as_the_rules_say(mesh_runs, mesh):
  _, fsdp, tensor = mesh
  run = mesh_runs[mesh]
  # wi_0 is (embed, mlp): embed over fsdp, mlp over tensor.
  d_model, d_ff = run["shapes"]["wi_0"]
  assert run["shard_shapes"]["wi_0"] == [d_model // fsdp, d_ff // tensor]
  # query is (embed, heads, kv): heads over tensor, head dim whole.
  d_model, heads, head_dim = run["shapes"]["query"]
  assert run["shard_shapes"]["query"] == [d_model // fsdp, heads // tensor, head_dim]
  # The embedding table is (vocab, embed): vocab over tensor (these rules), embed over fsdp.
  vocab, d_model = run["shapes"]["embedding"]
  assert run["shard_shapes"]["embedding"] == [vocab // tensor, d_model // fsdp]
  # The optimizer state is split like the parameters, not replicated on every device.
  assert run["device_bytes"]["opt_state"] == run["device_bytes"]["params"]
  assert run["device_bytes"]["params"] < mesh_runs[(1, 1, 1)]["device_bytes"]["params"]

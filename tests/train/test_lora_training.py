"""Training with LoRA / QLoRA: only adapters move and are optimized and checkpointed."""

import os
import shutil

import gin
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from sft_jax.data import packing
from sft_jax.data.collections import synthetic, synthetic_vocab
from sft_jax.evaluation import evaluator
from sft_jax.models import decoder, lora, t5
from sft_jax.train import checkpoints, loop, optimizers, partitioning
from sft_jax.train import metrics as train_metrics
from sft_jax.train import state as state_lib
from sft_jax.train.step import StepConfig, train_step

BASE = t5.EncoderDecoderModel(t5.T5Config(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                          num_encoder_layers=1, num_decoder_layers=1))
TINY = t5.EncoderDecoderModel(t5.T5Config(vocab_size=synthetic_vocab.VOCAB_SIZE, d_model=32, num_heads=2,
                                          head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))


def _batch():
  rng = np.random.default_rng(0)
  rows = [[(rng.integers(3, 200, 9), rng.integers(3, 200, 12))],
          [(rng.integers(3, 200, 5), rng.integers(3, 200, 2)), (rng.integers(3, 200, 4), rng.integers(3, 200, 3))]]
  laid = [packing.assemble_row([(i.astype(np.int32), t.astype(np.int32)) for i, t in r], 16, 16) for r in rows]
  return {k: np.stack([r[k] for r in laid]) for k in packing.FEATURES}


def _flat(state):
  return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _nbytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def _decoder_batch():
  tokens = np.random.default_rng(0).integers(3, 200, (2, 17)).astype(np.int32)
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_segment_ids": np.ones((2, 16), np.int32),
          "decoder_positions": np.tile(np.arange(16, dtype=np.int32), (2, 1)),
          "decoder_loss_weights": np.ones((2, 16), np.float32)}


# QLoRA on the LLaMA-family decoder, with rematerialized layers, adapter dropout and microbatches.
LLAMA = decoder.DecoderOnlyModel(decoder.DecoderConfig(d_model=64, num_layers=1, head_dim=16, remat_policy="full"))
CASES = {"lora-t5": (BASE, None, 0.0, 1, _batch), "qlora-llama": (LLAMA, "nf4", 0.1, 2, _decoder_batch)}


@pytest.mark.parametrize("case", list(CASES))
def test_a_step_moves_only_the_adapters(case):
  base, quantize, dropout, num_microbatches, make_batch = CASES[case]
  model = lora.LoRAModel(base, targets=("query", "value", "wo"), rank=4, alpha=8.0, quantize_base=quantize,
                         dropout=dropout)
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  optimizer = optax.adam(1e-2)
  graphdef, state = state_lib.init_train_state(model, optimizer, 0, mesh, rules)
  frozen, adapters = _flat(state.frozen), _flat(state.params)
  assert {p[-1] for p in adapters} == {"lora_a", "lora_b"}
  assert (np.dtype(np.uint8) in {v.dtype for v in frozen.values()}) == (quantize == "nf4")
  # The optimizer state covers the adapters alone: Adam's two moments of each, and counters.
  assert _nbytes(state.opt_state) - 2 * _nbytes(state.params) < 64

  config = StepConfig(graphdef, model, optimizer, optax.constant_schedule(1e-2), num_microbatches=num_microbatches)
  step = jax.jit(lambda s, b: train_step(config, s, b))
  batch = partitioning.global_batch(make_batch(), mesh)
  with state_lib.mesh_context(mesh, rules):
    first, m1 = step(state, batch)
    second, m2 = step(first, batch)
  assert np.isfinite(float(m1["loss"])) and float(m2["loss"]) < float(m1["loss"])
  for later in (first, second):
    got = _flat(later.frozen)
    assert set(got) == set(frozen)
    for path, value in frozen.items():
      np.testing.assert_array_equal(got[path], value)  # bitwise
  moved = {p for p, v in _flat(second.params).items() if not np.array_equal(v, adapters[p])}
  assert moved == set(adapters)  # B moves at step 1; A at step 2, once B is nonzero


def test_lora_optimizer_state_is_a_small_fraction_of_a_full_fine_tune():
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  optimizer = optimizers.create_optimizer(optax.constant_schedule(1e-3))
  _, full = state_lib.init_train_state(TINY, optimizer, 0, mesh, rules)
  _, adapted = state_lib.init_train_state(lora.LoRAModel(TINY, targets=("query", "value"), rank=4),
                                          optimizer, 0, mesh, rules)
  fraction = _nbytes(adapted.opt_state) / _nbytes(full.opt_state)
  assert fraction < 0.05, fraction
  assert _nbytes(adapted.frozen) == _nbytes(full.params)


@pytest.mark.slow
def test_lora_run_learns_resumes_and_saves_only_adapters(tmp_path, capsys):
  # A base model directory (as tools/convert_hf.py writes one), from a seed the LoRA run does not use.
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  base_dir = str(tmp_path / "base")
  _, base_params = state_lib.init_params(TINY, 7, mesh, rules)
  saver = checkpoints.Checkpointer(base_dir)
  saver.save(0, {"params": base_params}, {"step": 0})
  saver.close()

  model = lora.LoRAModel(TINY, targets=("query", "value", "out", "wo"), rank=4, alpha=8.0)
  train = dict(mixture_or_task_name=synthetic.SMOKE_MIXTURE_NAME, model=model, batch_size=8, input_length=128,
               target_length=32, checkpoint_every=15, log_every=5, train_steps=30, init_checkpoint=base_dir,
               input_autotune=False)
  gin.bind_parameter("learning_rate_schedule.peak", 2e-2)
  gin.bind_parameter("learning_rate_schedule.warmup_steps", 3)
  try:
    periodic = evaluator.PeriodicEvaluator(synthetic.SMOKE_MIXTURE_NAME, every=30, max_examples_per_task=1, batch_size=64,
                                           input_length=128, target_length=4)
    straight_dir = str(tmp_path / "straight")
    straight = loop.train(model_dir=straight_dir, periodic_eval=periodic, **train)
    assert f"training from {base_dir}: 3,072 LoRA parameters on a" in capsys.readouterr().out

    # It learns: the loss of the last 5 steps is well below that of the first 5.
    loss = train_metrics.read_metrics(straight_dir)["loss"]
    print("LoRA loss by step:", loss)
    assert loss[30] < loss[5] - 0.5, loss
    assert "eval/heldout_mean" in train_metrics.read_metrics(straight_dir)

    # The base is the checkpoint's, bitwise, and stayed so.
    got = _flat(straight.frozen)
    want = _flat(base_params)
    assert set(got) == set(want)
    for path, value in want.items():
      np.testing.assert_array_equal(got[path], value)

    # Checkpoints hold the adapters and their optimizer state only.
    params_dir = os.path.join(straight_dir, "checkpoints", "30", "params")
    saved = open(os.path.join(params_dir, "_METADATA")).read()
    assert "lora_a" in saved and "lora_b" in saved and "kernel" not in saved and "embedding" not in saved

    # A crashed run resumes from its adapter checkpoint onto the same base, exactly.
    crashed_dir = str(tmp_path / "crashed")
    shutil.copytree(straight_dir, crashed_dir)
    shutil.rmtree(os.path.join(crashed_dir, "checkpoints", "30"))
    resumed = loop.train(model_dir=crashed_dir, **train)
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  finally:
    gin.clear_config()

  # An evaluator restores adapters onto the base the run recorded, without being told it.
  _, restored = state_lib.restore_params(checkpoints.Checkpointer(straight_dir), 30, model, 0, mesh, rules)
  whole = _flat(state_lib.model_params(straight))
  restored = _flat(restored)
  assert set(restored) == set(whole)
  for path, value in whole.items():
    np.testing.assert_array_equal(restored[path], value)


@pytest.mark.parametrize("run_file,selector,quantized", [
    ("lora.gin", "train.model", False), ("qlora.gin", "train.model", True),
    ("lora_eval.gin", "evaluate_heldout.model", False), ("qlora_eval.gin", "evaluate_heldout.model", True)])
def test_lora_run_files_bind_the_adapted_model(run_file, selector, quantized):
  from sft_jax import config

  gin.clear_config()
  try:
    config.parse_gin_flags(["--gin_file=models/t5_tiny.gin", "--gin_file=mixtures/synthetic.gin",
                            f"--gin_file=runs/{run_file}", "--gin.MODEL_DIR='runs/x'", "--gin.TRAIN_STEPS=1",
                            "--gin.CHECKPOINT='runs/x'", "--gin.BASE_CHECKPOINT='runs/base'"])
    model = config.query_bound_value(selector)
    assert isinstance(model, lora.LoRAModel) and isinstance(model.base, t5.EncoderDecoderModel)
    assert model.base_checkpoint == "runs/base"
    assert model.quantize_base == ("nf4" if quantized else None)
    assert (model.rank, "wo" in model.targets) == ((64, True) if quantized else (8, False))
    if selector == "train.model":
      assert config.query_bound_value("train.init_checkpoint") == "runs/base"
  finally:
    gin.clear_config()


_MESH_CHILD = r"""
import json, sys
import jax, numpy as np, optax
from flax import nnx
sys.path.insert(0, "tests/train")
from test_lora_training import _batch
from sft_jax.models import decoder, lora, t5
from sft_jax.train import partitioning, state as state_lib
from sft_jax.train.step import StepConfig, train_step

BASE = t5.EncoderDecoderModel(t5.T5Config(vocab_size=256, d_model=64, num_heads=2, head_dim=32, d_ff=128,
                                          num_encoder_layers=1, num_decoder_layers=1))
for quantize in (None, "nf4"):
  model = lora.LoRAModel(BASE, targets=("query", "value", "out", "wi_0", "wo"), rank=4, quantize_base=quantize)
  for shape in [(1, 1, 1), (2, 2, 2), (1, 4, 2)]:
    mesh = partitioning.create_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])
    rules = partitioning.DEFAULT_RULES
    optimizer = optax.sgd(0.5, momentum=0.9)
    graphdef, state = state_lib.init_train_state(model, optimizer, 0, mesh, rules)
    shardings = state_lib.shardings_of(state)
    config = StepConfig(graphdef, model, optimizer, optax.constant_schedule(0.5))
    step = jax.jit(lambda s, b: train_step(config, s, b), in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    batch = {k: np.concatenate([v] * 4) for k, v in _batch().items()}
    losses = []
    with state_lib.mesh_context(mesh, rules):
      for _ in range(3):
        state, metrics = step(state, partitioning.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    wo = dict(nnx.to_flat_state(state.frozen))
    wo = {p[-1]: v[...] for p, v in wo.items() if p[:2] == ("encoder", "layers") and p[-2] == "wo"}
    print(json.dumps({"quantize": quantize, "mesh": shape, "losses": losses,
                      "wo_shard_rows": {k: v.addressable_shards[0].data.shape[0] for k, v in wo.items() if v.ndim}}))
"""


@pytest.mark.slow
def test_lora_and_qlora_steps_on_sharded_meshes_equal_one_device():
  import json
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", _MESH_CHILD], env=env, cwd=repo, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  runs = {(r["quantize"], tuple(r["mesh"])): r for r in lines}
  for quantize in (None, "nf4"):
    single = runs[(quantize, (1, 1, 1))]
    assert single["losses"][-1] < single["losses"][0]
    for mesh in [(2, 2, 2), (1, 4, 2)]:
      np.testing.assert_allclose(runs[(quantize, mesh)]["losses"], single["losses"], rtol=1e-5)
  # wo is (mlp, embed): its kernel, or its NF4 codes and scales by row, split over tensor (mlp).
  assert runs[(None, (1, 4, 2))]["wo_shard_rows"] == {"kernel": 64}
  assert runs[("nf4", (1, 4, 2))]["wo_shard_rows"] == {"kernel_codes": 64, "kernel_absmax_q": 64, "kernel_absmax_scale": 1}

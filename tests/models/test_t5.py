"""T5Transformer: packing isolation, parameter metadata and count, jit behaviour, dropout."""

import dataclasses
import os

from flax import nnx
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax import config as config_lib
from sft_jax.data import packing
from sft_jax.models import t5
from sft_jax.train import partitioning
from sft_jax.train import state as state_lib

TINY = t5.T5Config(d_model=32, num_heads=2, head_dim=8, d_ff=64, num_encoder_layers=2,
                   num_decoder_layers=2)
LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}


@pytest.fixture(scope="module")
def module():
  return t5.EncoderDecoderModel(TINY).init(0)


def _shift_right(targets):
  return np.concatenate([[0], targets[:-1]])


def _pack(examples, enc_len, dec_len):
  """One packed row of (inputs, targets) pairs, laid out by the data pipeline's packer."""
  row = packing.assemble_row([(np.asarray(i, np.int32), np.asarray(t, np.int32)) for i, t in examples],
                             enc_len, dec_len)
  return {k: jnp.asarray(v)[None] for k, v in row.items() if k != "decoder_loss_weights"}


@nnx.jit
def _forward(module, row):
  return module(row["encoder_input_tokens"], row["decoder_input_tokens"],
                encoder_segment_ids=row.get("encoder_segment_ids"),
                decoder_segment_ids=row.get("decoder_segment_ids"),
                encoder_positions=row.get("encoder_positions"),
                decoder_positions=row.get("decoder_positions"))


def _unpacked_logits(module, inputs, targets, enc_len, dec_len):
  enc = np.zeros((1, enc_len), np.int32)
  enc[0, :len(inputs)] = inputs
  dec = np.zeros((1, dec_len), np.int32)
  dec[0, :len(targets)] = _shift_right(targets)
  row = {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)}
  return np.asarray(_forward(module, row))[0, :len(targets)]


@pytest.mark.parametrize("absolute_positions", [False, True])
def test_packed_examples_are_isolated(absolute_positions):
  module = t5.EncoderDecoderModel(dataclasses.replace(TINY, absolute_positions=absolute_positions)).init(0)
  ex1 = ([5, 6, 7, 8, 1], [20, 21, 22, 1])
  ex2 = ([9, 10, 11, 1], [30, 31, 1])
  ex2_changed = ([40, 41, 42, 43], [50, 51, 52])
  logits = np.asarray(_forward(module, _pack([ex1, ex2], 12, 9)))
  logits_changed = np.asarray(_forward(module, _pack([ex1, ex2_changed], 12, 9)))
  assert np.all(np.isfinite(logits)), "padding rows must stay finite"
  np.testing.assert_allclose(logits_changed[0, :4], logits[0, :4], atol=1e-5)
  assert not np.allclose(logits_changed[0, 4:7], logits[0, 4:7], atol=1e-3)
  # Each example, packed, scores as if it were alone (positions restart per segment).
  np.testing.assert_allclose(logits[0, :4], _unpacked_logits(module, *ex1, 7, 6), atol=1e-4)
  np.testing.assert_allclose(logits[0, 4:7], _unpacked_logits(module, *ex2, 7, 6), atol=1e-4)


def test_sinusoidal_positions_match_the_transformer_formula():
  positions = np.array([[0, 1, 2, 0, 1], [3, 4, 0, 0, 0]], np.int32)
  got = np.asarray(t5.sinusoidal_positions(jnp.asarray(positions), 8))
  inv_freq = 1.0 / 10_000.0 ** (np.arange(4) / 4)
  angles = positions[..., None] * inv_freq
  np.testing.assert_allclose(got, np.concatenate([np.sin(angles), np.cos(angles)], -1), atol=1e-6)
  with pytest.raises(ValueError, match="even d_model"):
    t5.T5Config(d_model=33, absolute_positions=True)


EXPECTED_AXES = {  # by the module attribute holding the parameter
    "token_embedder": ("vocab", "embed"),
    "relpos_bias": ("heads", "relpos_buckets"),
    "query": ("embed", "heads", "kv"), "key": ("embed", "heads", "kv"),
    "value": ("embed", "heads", "kv"), "out": ("heads", "kv", "embed"),
    "wi_0": ("embed", "mlp"), "wi_1": ("embed", "mlp"), "wo": ("mlp", "embed"),
    "logits_dense": ("embed", "vocab"),
}


def test_every_param_has_logical_axis_names(module):
  params = nnx.state(module, nnx.Param)
  specs = dict(nnx.to_flat_state(nnx.get_partition_spec(params)))
  flat_params = list(nnx.to_flat_state(params))
  assert len(flat_params) == len(specs) > 0
  for path, param in flat_params:
    names = tuple(specs[path].get_value())  # without axis rules the spec holds the logical names
    assert len(names) == param.ndim and set(names) <= LOGICAL_AXES, (path, names)
    want = ("embed",) if path[-1] == "scale" else EXPECTED_AXES[path[-2]]
    assert names == want, (path, names)


def test_logical_names_map_to_mesh_axes_under_rules():
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = (("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
           ("kv", None), ("relpos_buckets", None))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    module = t5.EncoderDecoderModel(TINY).init(0)
    kernel = module.encoder.layers[0].mlp.wi_0.kernel
    assert kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    query = module.decoder.layers[1].self_attention.query.kernel
    assert query[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def _hand_param_count(c: t5.T5Config) -> int:
  d, inner, v = c.d_model, c.num_heads * c.head_dim, c.vocab_size
  attention = 4 * d * inner
  mlp = 3 * d * c.d_ff
  relpos = c.num_heads * c.relative_attention_num_buckets
  encoder_layer = attention + mlp + 2 * d
  decoder_layer = 2 * attention + mlp + 3 * d
  return (v * d                                                   # shared token embedding
          + c.num_encoder_layers * encoder_layer + relpos + d     # encoder + final norm
          + c.num_decoder_layers * decoder_layer + relpos + d     # decoder + final norm
          + d * v)                                                # untied output head


@pytest.mark.parametrize("config,expected", [(TINY, 53_952), (t5.T5Config(), 1_247_744)])
def test_param_count(config, expected):
  # Shapes only: eval_shape builds the module without computing any initializer.
  module = nnx.eval_shape(lambda: t5.EncoderDecoderModel(config).init(0))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
  assert _hand_param_count(config) == expected
  assert count == expected


def _batch(seed):
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, 259, size=(2, 8)).astype(np.int32)
  enc[1, 5:] = 0
  tgt = rng.integers(3, 259, size=(2, 6)).astype(np.int32)
  tgt[:, 4] = 1
  tgt[:, 5] = 0
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec),
          "decoder_target_tokens": jnp.asarray(tgt)}


def test_jit_after_split_merge_traces_once(module):
  model = t5.EncoderDecoderModel(TINY)
  graphdef, state = nnx.split(module)
  traces = {"loss": 0, "predict": 0}

  @jax.jit
  def loss(state, batch):
    traces["loss"] += 1
    return model.loss_fn(nnx.merge(graphdef, state), batch, z_loss=1e-4)

  @jax.jit
  def predict(state, batch):
    traces["predict"] += 1
    return model.predict_batch(nnx.merge(graphdef, state), batch, 7)

  with jax.checking_leaks():
    for seed in range(2):
      batch = _batch(seed)
      loss_sum, weight_sum, aux = loss(state, batch)
      tokens = predict(state, batch)
      assert np.isfinite(float(loss_sum)) and float(aux["z_loss_sum"]) > 0
      assert float(weight_sum) == 10.0 and set(aux) >= {"z_loss_sum", "cross_entropy_sum"}
      assert tokens.shape == (2, 7) and tokens.dtype == jnp.int32
  assert traces == {"loss": 1, "predict": 1}


def test_dropout_needs_rng_and_changes_outputs():
  # One layer per stack and rbg keys: compiling threefry for every dropout mask is what makes
  # this test slow on CPU; the PRNG implementation is not what is under test.
  config = t5.T5Config(d_model=32, num_heads=2, head_dim=8, d_ff=64, num_encoder_layers=1,
                       num_decoder_layers=1, dropout_rate=0.3)
  model = t5.EncoderDecoderModel(config)
  module = model.init(0)
  batch = _batch(0)
  loss = nnx.jit(lambda m, b, rng: model.loss_fn(m, b, dropout_rng=rng)[0])
  eval_loss = float(loss(module, batch, None))
  assert float(loss(module, batch, None)) == eval_loss
  loss_a = float(loss(module, batch, jax.random.key(1, impl="rbg")))
  loss_b = float(loss(module, batch, jax.random.key(2, impl="rbg")))
  assert loss_a != eval_loss and loss_a != loss_b
  with pytest.raises(ValueError, match="dropout_rng"):
    module(batch["encoder_input_tokens"], batch["decoder_input_tokens"], deterministic=False)


def _loss_logits_and_grads(impl, batch):
  """Mean target cross-entropy, logits and parameter gradients of TINY with `impl` attention."""
  model = t5.EncoderDecoderModel(dataclasses.replace(TINY, attention_impl=impl))
  graphdef, params, rest = nnx.split(model.init(0), nnx.Param, ...)

  def loss(params):
    module = nnx.merge(graphdef, params, rest)
    logits = module(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                    encoder_segment_ids=batch["encoder_segment_ids"],
                    decoder_segment_ids=batch["decoder_segment_ids"],
                    encoder_positions=batch["encoder_positions"],
                    decoder_positions=batch["decoder_positions"])
    log_probs = jax.nn.log_softmax(logits)
    target_log_probs = jnp.take_along_axis(
        log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    weights = batch["decoder_loss_weights"]
    return -jnp.sum(weights * target_log_probs) / jnp.sum(weights), logits

  grad_fn = jax.value_and_grad(loss, has_aux=True)
  jaxpr = str(jax.make_jaxpr(grad_fn)(params))
  # Interpret-mode kernels compile ~3x faster at backend optimization level 0.
  (value, logits), grads = jax.jit(grad_fn, compiler_options={
      "xla_backend_optimization_level": 0})(params)
  return value, logits, grads, jaxpr


def test_pallas_attention_gives_xla_logits_and_gradients():
  # Two rows: two packed examples then padding, and one example filling most of the row.
  rows = [packing.assemble_row([(np.arange(5, 10, dtype=np.int32), np.array([20, 21, 22, 1])),
                                (np.array([9, 10, 11, 1]), np.array([30, 31, 1]))], 12, 9),
          packing.assemble_row([(np.arange(3, 13, dtype=np.int32), np.arange(40, 48))], 12, 9)]
  batch = {key: jnp.asarray(np.stack([row[key] for row in rows])) for key in rows[0]}
  want_loss, want_logits, want_grads, xla_jaxpr = _loss_logits_and_grads("xla", batch)
  got_loss, got_logits, got_grads, pallas_jaxpr = _loss_logits_and_grads("pallas", batch)
  assert "pallas_call" in pallas_jaxpr and "pallas_call" not in xla_jaxpr
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  # Padding queries are don't-care outputs (xla averages uniformly, pallas gives zeros).
  real = np.asarray(batch["decoder_segment_ids"]) != 0
  np.testing.assert_allclose(np.asarray(got_logits)[real], np.asarray(want_logits)[real],
                             rtol=1e-5, atol=1e-5)
  flat_want = dict(nnx.to_flat_state(want_grads))
  for path, got in nnx.to_flat_state(got_grads):
    want = np.asarray(flat_want[path][...])
    np.testing.assert_allclose(np.asarray(got[...]), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max(), err_msg=str(path))
  relpos_grad = np.asarray(dict(nnx.to_flat_state(got_grads))[("encoder", "relpos_bias",
                                                               "embedding")][...])
  assert np.any(relpos_grad), "the kernel must backpropagate into the bias table"


def test_remat_policies_keep_gradients_and_save_memory():
  config = t5.T5Config(d_model=64, num_heads=2, head_dim=32, d_ff=256, num_encoder_layers=3,
                       num_decoder_layers=3)
  rng = np.random.default_rng(0)
  batch = {"encoder_input_tokens": jnp.asarray(rng.integers(3, 259, (8, 96)), jnp.int32),
           "decoder_input_tokens": jnp.asarray(rng.integers(3, 259, (8, 48)), jnp.int32),
           "decoder_target_tokens": jnp.asarray(rng.integers(3, 259, (8, 48)), jnp.int32)}
  results = {}
  for policy in ("none", "full", "dots"):
    model = t5.EncoderDecoderModel(dataclasses.replace(config, remat_policy=policy))
    graphdef, params = nnx.split(model.init(0), nnx.Param)
    grad_fn = jax.grad(lambda p: model.loss_fn(nnx.merge(graphdef, p), batch)[0])
    compiled = jax.jit(grad_fn).lower(params).compile()
    results[policy] = (str(jax.make_jaxpr(grad_fn)(params)), compiled.memory_analysis().temp_size_in_bytes,
                       jax.tree.leaves(compiled(params)))
  assert "remat" not in results["none"][0]
  for policy in ("full", "dots"):
    assert "remat" in results[policy][0]
    for got, want in zip(results[policy][2], results["none"][2]):
      want = np.asarray(want)  # recomputation reorders float sums: equal up to rounding
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  # Recomputing each layer's forward keeps fewer activations alive for the backward pass.
  assert results["full"][1] < results["none"][1]
  with pytest.raises(ValueError, match="remat_policy"):
    t5.T5Config(remat_policy="sometimes")


GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "gin_configs", "models")


@pytest.mark.parametrize("size,params", [
    ("small", 76_961_152), ("base", 247_577_856), ("large", 783_150_080), ("xl", 2_849_757_184),
    ("xxl", 11_135_332_352)])
@pytest.mark.parametrize("family", ["t5_v1_1", "flan_t5"])
def test_model_gin_files_build_the_published_shapes(family, size, params):
  gin.clear_config()
  try:
    config_lib.parse_gin_flags([f"--gin_file={os.path.join(GIN_DIR, f'{family}_{size}.gin')}"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(model, t5.EncoderDecoderModel)
  assert (model.config.vocab_size, model.config.feed_forward_proj) == (32128, "gated-gelu")
  assert not model.config.tie_word_embeddings
  # Shapes only: nothing is allocated, even for XXL.
  abstract = nnx.state(nnx.eval_shape(lambda: model.init(0)), nnx.Param)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  assert _hand_param_count(model.config) == params  # the counts Hugging Face reports
  assert count == params


def test_activations_and_logits_are_constrained_to_the_batch_axes_under_the_rules():
  model = t5.EncoderDecoderModel(TINY)
  graphdef, params = nnx.split(model.init(0), nnx.Param)
  batch = _batch(0)
  loss = lambda p: model.loss_fn(nnx.merge(graphdef, p), batch)[0]  # noqa: E731
  assert "sharding_constraint" not in str(jax.make_jaxpr(loss)(params))
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  with state_lib.mesh_context(mesh, partitioning.logical_axis_rules()):
    jaxpr = str(jax.make_jaxpr(loss)(params))
  # One constraint per layer output (2 encoder + 2 decoder layers) and one on the logits.
  assert jaxpr.count("sharding_constraint") == 5
  assert jaxpr.count("P(('data', 'fsdp'), None, None)") >= 5

"""LoRA adapters (identity at init, merge/unmerge, export) and the NF4 storage of QLoRA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sft_jax.models import decoder, hf_io, lora, t5

T5_BASE = t5.EncoderDecoderModel(t5.T5Config(d_model=64, num_heads=2, head_dim=32, d_ff=128,
                                             num_encoder_layers=1, num_decoder_layers=1))
LLAMA_BASE = decoder.DecoderOnlyModel(decoder.DecoderConfig(d_model=64, num_layers=1, num_heads=4, num_kv_heads=2,
                                                            head_dim=16, d_ff=128, attention_bias=True))
ALL_T5 = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")


def _tokens(shape=(2, 8), seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 3, 200)


def _logits(module, tokens):
  """float32 logits of either network on `tokens` (as encoder and decoder inputs for T5)."""
  if isinstance(module, t5.T5Transformer):
    return module(tokens, tokens)
  return module(tokens)


def _randomize_adapters(module, seed=3):
  """B is zero at init; give every adapter nonzero A and B so merges have something to fold."""
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  for _, layer in lora.lora_layers(module):
    layer.lora_b.set_value(0.1 * jax.random.normal(next(keys), layer.lora_b.shape))


# ---- NF4 ---------------------------------------------------------------------------------------

def test_nf4_codes_are_the_normal_quantiles_of_the_paper():
  stats = pytest.importorskip("scipy.stats")
  offset = 0.9677083  # bitsandbytes' create_normal_map: 1/2 (1/32 + 1/30) from each tail
  positive = stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  negative = -stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  values = np.sort(np.concatenate([positive, [0.0], negative]))
  np.testing.assert_allclose(lora.NF4_CODES, values / values.max(), atol=1e-6)
  assert len(set(lora.NF4_CODES.tolist())) == 16 and lora.NF4_MAX_GAP == pytest.approx(0.3038, abs=1e-4)


def test_the_16_nf4_values_round_trip_exactly():
  # Through the block codec with arbitrary block scales ...
  absmax = np.array([1.0, 0.37, 2.5e-3, 11.0], np.float32)
  blocks = (np.tile(lora.NF4_CODES, 4)[None, :] * absmax[:, None]).astype(np.float32)
  codes, got_absmax = lora.nf4_quantize_blocks(jnp.asarray(blocks))
  np.testing.assert_array_equal(np.asarray(codes), np.tile(np.arange(16, dtype=np.uint8), (4, 4)))
  np.testing.assert_array_equal(np.asarray(lora.nf4_dequantize_blocks(codes, got_absmax)), blocks)
  # ... and through the packed, double-quantized storage (equal block scales quantize exactly).
  kernel = np.tile(lora.NF4_CODES, 8).reshape(2, 64) * np.float32(0.5)
  q = lora.nf4_quantize(jnp.asarray(kernel))
  np.testing.assert_array_equal(np.asarray(lora.nf4_dequantize(q, kernel.shape)), kernel)


def test_nf4_reconstruction_error_is_within_the_derived_bound():
  w = jax.random.normal(jax.random.key(0), (192, 4, 64), jnp.float32) * 0.02  # 768 rows of 64: 3 scale blocks
  q = lora.nf4_quantize(w)
  err_NxB = np.abs(np.asarray(lora.nf4_dequantize(q, w.shape)) - np.asarray(w)).reshape(-1, 64)
  absmax_N = np.abs(np.asarray(w)).reshape(-1, 64).max(axis=1)
  # The scale block absmax of each weight block: max |s - mean| over its 256 block scales.
  centered = absmax_N - absmax_N.mean(dtype=np.float32)
  absmax2_N = np.repeat(np.abs(np.pad(centered, (0, -len(centered) % 256))).reshape(-1, 256).max(axis=1), 256)
  bound_N = absmax_N * lora.NF4_MAX_GAP / 2 + absmax2_N[:len(absmax_N)] / 254
  assert np.all(err_NxB.max(axis=1) <= bound_N * (1 + 1e-5) + 1e-9)
  np.testing.assert_allclose(np.asarray(q.absmax_scale), absmax2_N[::256], rtol=1e-5)
  # The bound is not loose: the NF4 term dominates and is nearly reached.
  assert err_NxB.max() > 0.5 * bound_N.max()


def test_nf4_storage_is_about_4_127_bits_per_weight():
  w = jax.random.normal(jax.random.key(0), (1024, 1024), jnp.float32)
  q = lora.nf4_quantize(w)
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == (1024, 512)
  assert q.absmax_q.dtype == jnp.int8 and q.absmax_q.shape == (1024, 16)
  assert q.absmax_scale.dtype == jnp.float32 and q.absmax_scale.shape == (64,)
  bits = lora.num_bits(q) / w.size
  assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-4)  # + 32 bits of mean
  # A whole QLoRA network's quantized kernels, measured on its arrays.
  module = lora.LoRAModel(T5_BASE, targets=ALL_T5, rank=2, quantize_base="nf4").init(0)
  quantized = nnx.state(module, lora.NF4Param)
  weights = sum(int(np.prod(layer.kernel_shape)) for _, layer in lora.lora_layers(module))
  assert 4.1 <= lora.num_bits(quantized) / weights <= 4.2
  # No full-precision copy of a quantized kernel is kept: the only nnx.Param are the adapters.
  assert {p[-1] for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))} == {"lora_a", "lora_b"}


# ---- LoRA ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", [T5_BASE, LLAMA_BASE], ids=["t5", "llama"])
def test_adapted_network_starts_as_the_base(base):
  model = lora.LoRAModel(base, targets=("query", "value", "wo"), rank=4, alpha=8.0)
  module, reference = model.init(0), base.init(0)
  trainable, frozen = nnx.state(module, lora.LoRAParam), nnx.state(module, lora.FrozenParam)
  assert {p[-1] for p, _ in nnx.to_flat_state(trainable)} == {"lora_a", "lora_b"}
  # Every base parameter is frozen, at its own path, with its own value.
  base_flat = dict(nnx.to_flat_state(nnx.state(reference, nnx.Param)))
  frozen_flat = dict(nnx.to_flat_state(frozen))
  assert set(frozen_flat) == set(base_flat)
  for path, variable in base_flat.items():
    np.testing.assert_array_equal(np.asarray(frozen_flat[path][...]), np.asarray(variable[...]))
  tokens = _tokens()
  np.testing.assert_array_equal(np.asarray(_logits(module, tokens)), np.asarray(_logits(reference, tokens)))
  # Logical axes: the kernel's in-axes then the rank, the rank then its out-axes.
  layer = dict(lora.lora_layers(module))[("layers", 0, "self_attention", "query") if base is LLAMA_BASE
                                         else ("encoder", "layers", 0, "attention", "query")]
  assert layer.lora_a.get_metadata()["out_sharding"] == ("embed", "lora_rank")
  assert layer.lora_b.get_metadata()["out_sharding"][0] == "lora_rank"
  assert layer.lora_b.shape[0] == layer.lora_a.shape[-1] == 4


def test_targets_select_projections_by_name_or_path_end():
  module = lora.LoRAModel(T5_BASE, targets=("self_attention/query",)).init(0)
  assert [p for p, _ in lora.lora_layers(module)] == [("decoder", "layers", 0, "self_attention", "query")]
  with pytest.raises(ValueError, match=r"match no projection.*'query'"):
    lora.LoRAModel(T5_BASE, targets=("q_proj",)).init(0)


def test_merge_folds_scaled_adapters_and_unmerge_restores_the_base():
  model = lora.LoRAModel(T5_BASE, targets=("query", "value", "wo"), rank=4, alpha=8.0)
  module = model.init(0)
  _randomize_adapters(module)
  tokens = _tokens()
  adapted = np.asarray(_logits(module, tokens))
  before = {path: np.asarray(layer.kernel[...]) for path, layer in lora.lora_layers(module)}
  lora.merge(module)
  for path, layer in lora.lora_layers(module):
    a, b = np.asarray(layer.lora_a[...], np.float64), np.asarray(layer.lora_b[...], np.float64)
    delta = (8.0 / 4) * np.tensordot(a, b, axes=1)  # (alpha / r) * A B: PyTorch's (alpha / r) * B A, transposed
    np.testing.assert_allclose(np.asarray(layer.kernel[...]), before[path] + delta, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(_logits(module, tokens)), adapted, atol=1e-5)
  lora.unmerge(module)
  for path, layer in lora.lora_layers(module):
    np.testing.assert_allclose(np.asarray(layer.kernel[...]), before[path], atol=1e-7)
  np.testing.assert_allclose(np.asarray(_logits(module, tokens)), adapted, atol=1e-5)


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_merged_params_are_a_plain_base_state_that_exports(tmp_path, quantize):
  model = lora.LoRAModel(T5_BASE, targets=ALL_T5, rank=2, alpha=4.0, quantize_base=quantize)
  module = model.init(0)
  _randomize_adapters(module)
  graphdef, params = lora.merged_params(model, module)
  assert all(type(v) is nnx.Param for _, v in nnx.to_flat_state(params))
  tokens = _tokens()
  np.testing.assert_allclose(np.asarray(_logits(nnx.merge(graphdef, params), tokens)),
                             np.asarray(_logits(module, tokens)), atol=1e-5)
  files = hf_io.save_hf(str(tmp_path / "hf"), model.config, params)
  assert files and all(f.endswith(".safetensors") for f in files)


def test_nf4_merge_in_place_is_refused():
  module = lora.LoRAModel(T5_BASE, quantize_base="nf4").init(0)
  with pytest.raises(ValueError, match="merged_params"):
    lora.merge(module)


def test_lora_dropout_acts_only_with_a_key():
  from sft_jax.data import packing
  model = lora.LoRAModel(T5_BASE, targets=("query", "value"), rank=4, dropout=0.5)
  module = model.init(0)
  _randomize_adapters(module)
  graphdef, state = nnx.split(module)
  pairs = [(np.arange(3, 12, dtype=np.int32), np.arange(5, 10, dtype=np.int32))]
  batch = {k: v[None] for k, v in packing.assemble_row(pairs, 16, 8).items()}
  loss = jax.jit(lambda s, rng: model.loss_fn(nnx.merge(graphdef, s), batch, dropout_rng=rng)[0])
  no_key = float(jax.jit(lambda s: model.loss_fn(nnx.merge(graphdef, s), batch)[0])(state))
  with_keys = [float(loss(state, jax.random.key(i))) for i in range(2)]
  assert np.isfinite(with_keys).all() and with_keys[0] != no_key and with_keys[0] != with_keys[1]

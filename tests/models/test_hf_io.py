"""Hugging Face import/export against `transformers` (T5, LLaMA-family): logits, scores, decoding, weights."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sft_jax.kernels.relative_position import relative_position_bucket  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import checkpoints, partitioning  # noqa: E402
from sft_jax.train import state as state_lib  # noqa: E402

_TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "convert_hf.py"
VOCAB = 96
# max_distance 16 with inputs of 40 tokens: distances past it share the last bucket.
HF_KW = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=3,
             relative_attention_num_buckets=16, relative_attention_max_distance=16, dropout_rate=0.0,
             decoder_start_token_id=0)
VARIANTS = {
    # T5 v1.1 / Flan-T5: gated-GELU, its own head, outputs unscaled.
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, own_head=True),
    # What transformers 5 builds for tie_word_embeddings=False: head tied, outputs unscaled.
    "v1_1_tied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, own_head=False),
    # Original T5: ReLU, tied head fed outputs scaled by d_model**-0.5.
    "v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True, own_head=False),
}


def build_hf_t5(variant: str, seed: int = 0):
  """A tiny random transformers T5 of `variant`, with non-trivial layer norm scales."""
  kw = dict(VARIANTS[variant])
  own_head = kw.pop("own_head")
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_KW, **kw)).eval()
  with torch.no_grad():
    if own_head:
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, HF_KW["d_model"]))
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.add_(0.2 * torch.randn_like(param))
  return model


@pytest.fixture(scope="module")
def mesh_rules():
  return partitioning.create_mesh(), partitioning.logical_axis_rules()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """{variant: (transformers model, saved directory)}."""
  out = {}
  for variant in VARIANTS:
    model = build_hf_t5(variant)
    path = str(tmp_path_factory.mktemp(variant))
    model.save_pretrained(path)
    out[variant] = (model, path)
  return out


def _random_batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, VOCAB, (3, 40))
  enc[1, 23:] = 0  # padded input
  targets = rng.integers(2, VOCAB, (3, 37))
  dec_mask = np.ones_like(targets)
  dec_mask[2, 19:] = 0  # padded target
  dec_in = np.concatenate([np.zeros((3, 1), np.int64), targets[:, :-1]], 1)
  return enc, dec_in, dec_mask


@nnx.jit
def _sft_logits(module, enc, dec_in, dec_mask):
  return module(enc, dec_in, decoder_segment_ids=dec_mask)


def _max_logit_diff(hf_model, loaded, seed=0):
  enc, dec_in, dec_mask = _random_batch(seed)
  with torch.no_grad():
    want = hf_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor((enc != 0).astype(np.int64)),
                    decoder_input_ids=torch.tensor(dec_in),
                    decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
  module = nnx.merge(loaded.graphdef, loaded.params)
  got = np.asarray(_sft_logits(module, jnp.asarray(enc, jnp.int32), jnp.asarray(dec_in, jnp.int32),
                               jnp.asarray(dec_mask, jnp.int32)))
  return float(np.abs(got - want)[dec_mask.astype(bool)].max())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(variant, hf_dirs, mesh_rules):
  hf_model, path = hf_dirs[variant]
  loaded = hf_io.import_hf(path, mesh=mesh_rules[0], rules=mesh_rules[1])
  config = loaded.model.config
  assert config.tie_word_embeddings == (variant != "v1_1")
  assert config.scale_decoder_outputs == (variant == "v1_0")
  assert config.feed_forward_proj == VARIANTS[variant]["feed_forward_proj"]
  assert _max_logit_diff(hf_model, loaded) <= 1e-4


def test_greedy_decoding_matches_transformers(hf_dirs, mesh_rules):
  # v1_0: the tied, scaled head in the KV-cached decode step.
  hf_model, path = hf_dirs["v1_0"]
  loaded = hf_io.import_hf(path, mesh=mesh_rules[0], rules=mesh_rules[1])
  enc = np.random.default_rng(3).integers(2, VOCAB, (2, 30))
  enc[1, 12:] = 0
  # Greedy by full recomputation (transformers' generate cache assumes as many decoder layers as
  # encoder layers, and these models have 3 and 2).
  dec = torch.zeros((2, 1), dtype=torch.long)
  with torch.no_grad():
    for _ in range(10):
      logits = hf_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor((enc != 0).astype(np.int64)),
                        decoder_input_ids=dec).logits
      dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
  want = dec.numpy()[:, 1:]
  module = nnx.merge(loaded.graphdef, loaded.params)
  got = np.asarray(nnx.jit(lambda m, e: loaded.model.predict_batch(m, {"encoder_input_tokens": e}, 10))(
      module, jnp.asarray(enc, jnp.int32)))
  for row in range(2):  # sft_jax zeroes what follows a row's EOS
    ends = np.flatnonzero(want[row] == 1)
    stop = ends[0] + 1 if len(ends) else want.shape[1]
    np.testing.assert_array_equal(got[row, :stop], want[row, :stop])


def test_buckets_match_transformers_beyond_max_distance():
  relative = np.arange(-3000, 3001)
  for buckets, max_distance in ((32, 128), (16, 16), (32, 64)):
    for bidirectional in (True, False):
      want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
          torch.tensor(relative), bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
      got = relative_position_bucket(jnp.asarray(relative), bidirectional, buckets, max_distance)
      np.testing.assert_array_equal(np.asarray(got), want.numpy())


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_sharded_and_bf16_files(hf_dirs, mesh_rules, tmp_path):
  hf_model, path = hf_dirs["v1_1"]
  reference = hf_io.import_hf(path, mesh=mesh_rules[0], rules=mesh_rules[1])
  sharded = str(tmp_path / "sharded")
  hf_model.save_pretrained(sharded, max_shard_size="40KB")
  assert os.path.exists(os.path.join(sharded, hf_io.INDEX_FILE))
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 2
  loaded = hf_io.import_hf(sharded, mesh=mesh_rules[0], rules=mesh_rules[1])
  for got, want in zip(_leaves(loaded.params), _leaves(reference.params)):
    np.testing.assert_array_equal(got, want)

  bf16 = str(tmp_path / "bf16")
  build_hf_t5("v1_1").to(torch.bfloat16).save_pretrained(bf16)
  loaded = hf_io.import_hf(bf16, mesh=mesh_rules[0], rules=mesh_rules[1])
  query = loaded.params["encoder"]["layers"][0]["attention"]["query"]["kernel"][...]
  assert query.dtype == jnp.float32
  q_weight = hf_model.encoder.block[0].layer[0].SelfAttention.q.weight.detach()
  want = q_weight.to(torch.bfloat16).float().numpy().reshape(4, 8, 32).transpose(2, 0, 1)
  np.testing.assert_array_equal(np.asarray(query), want)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_reloads_with_identical_weights(variant, hf_dirs, mesh_rules, tmp_path):
  hf_model, path = hf_dirs[variant]
  loaded = hf_io.import_hf(path, mesh=mesh_rules[0], rules=mesh_rules[1])
  out = str(tmp_path / "export")
  # A small shard limit exercises the sharded layout with its index.
  files = hf_io.save_hf(out, loaded.model.config, loaded.params, base_config=loaded.hf_config,
                        max_shard_bytes=64 << 10 if variant == "v1_1" else 5 << 30)
  assert (len(files) > 1) == (variant == "v1_1")
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out)
  want, got = hf_model.state_dict(), reloaded.state_dict()
  assert set(want) == set(got)
  for name in want:
    assert torch.equal(want[name], got[name]), name


def test_convert_tool_round_trip(hf_dirs, mesh_rules, tmp_path):
  spec = importlib.util.spec_from_file_location("convert_hf", _TOOL)
  convert_hf = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(convert_hf)
  hf_model, path = hf_dirs["v1_0"]
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "</s>", "extra_ids": 0}, f)
  model_dir = str(tmp_path / "sft")
  convert_hf.main([f"--from_hf={path}", f"--to={model_dir}"])
  assert sorted(os.listdir(os.path.join(model_dir, "hf"))) == ["config.json", "tokenizer_config.json"]

  # The trainer's own restore path reads the converted checkpoint.
  model = hf_io.t5_model_from_gin(os.path.join(model_dir, "config.gin"))
  assert model.config.tie_word_embeddings and model.config.feed_forward_proj == "relu"
  mesh, rules = mesh_rules
  _, params = state_lib.restore_params(checkpoints.Checkpointer(model_dir), 0, model, 0, mesh, rules)
  direct = hf_io.import_hf(path, mesh=mesh, rules=rules)
  for got, want in zip(_leaves(params), _leaves(direct.params)):
    np.testing.assert_array_equal(got, want)

  out = str(tmp_path / "hf_out")
  convert_hf.main([f"--from={model_dir}", f"--to_hf={out}"])
  assert os.path.exists(os.path.join(out, "tokenizer_config.json"))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out)
  for name, tensor in hf_model.state_dict().items():
    assert torch.equal(tensor, reloaded.state_dict()[name]), name


def _copy_dir(src, dst, edit_config=None, edit_tensors=None):
  os.makedirs(dst)
  config = hf_io.read_hf_config(src)
  if edit_config:
    edit_config(config)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f)
  tensors = safetensors.numpy.load_file(os.path.join(src, hf_io.SINGLE_FILE))
  if edit_tensors:
    edit_tensors(tensors)
  safetensors.numpy.save_file(tensors, os.path.join(dst, hf_io.SINGLE_FILE))
  return dst


def test_errors_name_the_file_and_tensor(hf_dirs, mesh_rules, tmp_path):
  _, path = hf_dirs["v1_1"]
  load = lambda p: hf_io.import_hf(p, mesh=mesh_rules[0], rules=mesh_rules[1])  # noqa: E731
  missing = _copy_dir(path, str(tmp_path / "missing"),
                      edit_tensors=lambda t: t.pop("decoder.block.1.layer.2.DenseReluDense.wo.weight"))
  with pytest.raises(KeyError, match=r"missing.*decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight"):
    load(missing)
  wrong = _copy_dir(path, str(tmp_path / "shape"), edit_config=lambda c: c.update(d_ff=40))
  with pytest.raises(ValueError, match=r"shape/model\.safetensors: tensor encoder\.block\.0\.layer\.1\."
                                       r"DenseReluDense\.wi_0\.weight has shape \(48, 32\).*\(40, 32\)"):
    load(wrong)
  bart = _copy_dir(path, str(tmp_path / "bart"),
                   edit_config=lambda c: c.update(architectures=["BartForConditionalGeneration"]))
  with pytest.raises(ValueError, match=r"bart/config\.json: architecture.*supported: T5ForConditionalGeneration"):
    load(bart)
  extra = _copy_dir(path, str(tmp_path / "extra"),
                    edit_tensors=lambda t: t.update({"encoder.block.0.layer.0.SelfAttention.q.bias":
                                                     np.zeros(32, np.float32)}))
  with pytest.raises(ValueError, match=r"no place.*q\.bias"):
    load(extra)
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load(empty)


_SHARDED_CHILD = """
import importlib.util, sys
import jax, numpy as np, torch, transformers
spec = importlib.util.spec_from_file_location("t", sys.argv[1])
t = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t)
from sft_jax.models import hf_io
from sft_jax.train import partitioning
assert jax.device_count() == 8
rules = tuple((n, "tensor") if n == "vocab" else (n, a) for n, a in partitioning.DEFAULT_RULES)
mesh = partitioning.create_mesh(data=2, fsdp=2, tensor=2)
for variant in ("v1_1", "v1_0"):
  model = t.build_hf_t5(variant)
  model.save_pretrained(f"{sys.argv[2]}/{variant}")
  loaded = hf_io.import_hf(f"{sys.argv[2]}/{variant}", mesh=mesh, rules=rules)
  query = loaded.params["decoder"]["layers"][1]["self_attention"]["query"]["kernel"][...]
  assert query.addressable_shards[0].data.shape == (16, 2, 8), query.sharding
  assert t._max_logit_diff(model, loaded) <= 1e-4
  hf_io.save_hf(f"{sys.argv[2]}/{variant}_out", loaded.model.config, loaded.params)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(f"{sys.argv[2]}/{variant}_out")
  assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
# Decoders: kv heads split over tensor too (2 kv heads, 2 devices).
rules = tuple(r for r in rules if r[0] != "kv_heads") + (("kv_heads", "tensor"),)
for variant in ("llama_gqa", "qwen2_untied"):
  model = t.build_hf_decoder(variant)
  model.save_pretrained(f"{sys.argv[2]}/{variant}")
  loaded = hf_io.import_hf(f"{sys.argv[2]}/{variant}", mesh=mesh, rules=rules)
  key = loaded.params["layers"][1]["self_attention"]["key"]["kernel"][...]
  assert key.addressable_shards[0].data.shape == (16, 1, 8), key.sharding
  assert t.decoder_logit_diff(model, loaded) <= 1e-4
  hf_io.save_hf(f"{sys.argv[2]}/{variant}_out", loaded.model.config, loaded.params, base_config=loaded.hf_config)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(f"{sys.argv[2]}/{variant}_out")
  assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
print("ok")
"""


@pytest.mark.slow
def test_import_into_a_sharded_mesh(tmp_path):
  # 8 simulated devices as data 2 x fsdp 2 x tensor 2: every callback reads a transposed slice.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SHARDED_CHILD, __file__, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_model_from_a_runs_operative_config(tmp_path):
  path = tmp_path / "config.gin"
  path.write_text("import sft_jax.models.t5\nMODEL = @t5.EncoderDecoderModel()\ntrain.batch_size = 32\n"
                  "MODEL/EncoderDecoderModel.config = @t5.T5Config()\nMODEL/EncoderDecoderModel.eos_id = 1\n"
                  "MODEL/T5Config.d_model = 64\nMODEL/T5Config.attention_impl = 'xla'\n"
                  "MODEL/T5Config.absolute_positions = True\nMODEL/T5Config.vocab_size = 1536\n")
  model = hf_io.t5_model_from_gin(str(path))
  assert (model.config.d_model, model.config.vocab_size, model.config.absolute_positions) == (64, 1536, True)
  with pytest.raises(ValueError, match="absolute_positions has no Hugging Face"):
    hf_io.hf_config_from_t5(model.config)


@pytest.mark.slow
def test_parity_benchmark_smoke(capsys):
  script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "hf_parity.py"
  spec = importlib.util.spec_from_file_location("hf_parity", script)
  benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(benchmark)
  results = benchmark.main(["--seq_len=40", "--max_distance=16", "--num_buckets=16", "--d_model=32", "--vocab_size=64",
                            "--num_scores=3"])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"] == results
  for row in results:
    assert row["max_abs_logit_diff"] <= 1e-4 and row["max_abs_score_diff"] <= 1e-3 and row["export_equal"], row


# ---- LLaMA-family decoders ---------------------------------------------------------------------

def decoder_rules():
  """The default rules, which replicate the decoder's key/value heads."""
  rules = partitioning.logical_axis_rules()
  assert dict(rules)["kv_heads"] is None
  return rules


DECODER_KW = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  head_dim=8, rms_norm_eps=1e-5, bos_token_id=2, eos_token_id=1, pad_token_id=0)
# original_max_position_embeddings 32 with head_dim 8: the llama3 scaling keeps, blends and slows
# one frequency band each, so a wrong formula shows in the logits.
LLAMA3_ROPE = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32)
DECODER_VARIANTS = {
    # GQA (4 query heads, 2 kv heads), Llama 3.1 RoPE scaling, own head.
    "llama_gqa": ("Llama", dict(num_key_value_heads=2, rope_parameters=dict(LLAMA3_ROPE, rope_theta=10000.0),
                                tie_word_embeddings=False)),
    # Multi-head, linear RoPE scaling, tied head.
    "llama_tied": ("Llama", dict(num_key_value_heads=4, rope_parameters=dict(rope_type="linear", factor=2.0,
                                                                             rope_theta=500.0),
                                 tie_word_embeddings=True)),
    # Multi-query with q/k/v biases, tied head (as Qwen2-0.5B).
    "qwen2": ("Qwen2", dict(num_key_value_heads=1, rope_parameters=dict(rope_type="default", rope_theta=1e6),
                            tie_word_embeddings=True)),
    "qwen2_untied": ("Qwen2", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "mistral": ("Mistral", dict(num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False)),
}


def build_hf_decoder(variant: str, seed: int = 0):
  """A tiny random transformers causal LM of `variant`, with non-trivial norm scales and biases."""
  family, kw = DECODER_VARIANTS[variant]
  torch.manual_seed(seed)
  config = getattr(transformers, f"{family}Config")(**DECODER_KW, **kw)
  model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        param.add_(0.3 * torch.randn_like(param))
  return model


@pytest.fixture(scope="module")
def decoder_dirs(tmp_path_factory):
  """{variant: (transformers model, saved directory, imported LoadedModel)}."""
  mesh, rules = partitioning.create_mesh(), decoder_rules()
  out = {}
  for variant in DECODER_VARIANTS:
    model = build_hf_decoder(variant)
    path = str(tmp_path_factory.mktemp(variant))
    model.save_pretrained(path, safe_serialization=True)
    out[variant] = (model, path, hf_io.import_hf(path, mesh=mesh, rules=rules))
  return out


@nnx.jit
def _decoder_logits(module, tokens, segment_ids=None, positions=None):
  return module(tokens, segment_ids, positions)


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def decoder_logit_diff(hf_model, loaded, seed: int = 0, length: int = 40) -> float:
  """Max |sft_jax - transformers| logit over a random [3, length] batch."""
  tokens = np.random.default_rng(seed).integers(3, VOCAB, (3, length))
  module = nnx.merge(loaded.graphdef, loaded.params)
  got = np.asarray(_decoder_logits(module, jnp.asarray(tokens, jnp.int32)))
  return float(np.abs(got - _hf_logits(hf_model, tokens)).max())


@pytest.mark.parametrize("variant", list(DECODER_VARIANTS))
def test_decoder_logits_match_transformers(variant, decoder_dirs):
  hf_model, _, loaded = decoder_dirs[variant]
  config, hf_config = loaded.model.config, hf_model.config
  assert (config.num_heads, config.num_kv_heads) == (4, hf_config.num_key_value_heads)
  assert config.tie_word_embeddings == hf_config.tie_word_embeddings
  assert config.attention_bias == variant.startswith("qwen2")
  rope_type = dict(config.rope_scaling or {}).get("rope_type")
  assert rope_type == {"llama_gqa": "llama3", "llama_tied": "linear"}.get(variant)
  assert decoder_logit_diff(hf_model, loaded) <= 1e-4


def test_rope_frequencies_match_transformers():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: PLC0415
  from sft_jax.models import decoder  # noqa: PLC0415
  for scaling, theta, head_dim in (
      (dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192), 500000.0, 128),
      (dict(rope_type="linear", factor=4.0), 10000.0, 64)):
    hf = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2,
                                  rope_parameters=dict(scaling, rope_theta=theta))
    want, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    got = decoder.rope_inv_freq(head_dim, theta, decoder.normalize_rope_scaling(scaling))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


def test_packed_decoder_segments_match_transformers_alone(decoder_dirs):
  hf_model, _, loaded = decoder_dirs["llama_gqa"]
  rng = np.random.default_rng(1)
  first, second = rng.integers(3, VOCAB, 13), rng.integers(3, VOCAB, 19)
  row = np.concatenate([first, second, np.zeros(4, np.int64)])[None]
  segment_ids = np.array([[1] * 13 + [2] * 19 + [0] * 4])
  positions = np.array([list(range(13)) + list(range(19)) + [0] * 4])
  module = nnx.merge(loaded.graphdef, loaded.params)
  got = np.asarray(_decoder_logits(module, jnp.asarray(row, jnp.int32), jnp.asarray(segment_ids, jnp.int32),
                                   jnp.asarray(positions, jnp.int32)))
  assert np.abs(got[0, :13] - _hf_logits(hf_model, first[None])[0]).max() <= 1e-4
  assert np.abs(got[0, 13:32] - _hf_logits(hf_model, second[None])[0]).max() <= 1e-4


def _hand_scores(hf_model, prompts, targets):
  """sum_j log p(target_j | prompt, target_<j) by log-softmax of transformers' logits, float64."""
  out = []
  for prompt, target in zip(prompts, targets):
    sequence = np.concatenate([prompt, target])
    logits = torch.tensor(_hf_logits(hf_model, sequence[None])[0], dtype=torch.float64)
    log_probs = torch.log_softmax(logits, -1)[len(prompt) - 1:-1]
    out.append(float(log_probs.gather(-1, torch.tensor(target)[:, None]).sum()))
  return np.array(out)


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2"])
def test_decoder_score_batch_matches_transformers(variant, decoder_dirs):
  hf_model, _, loaded = decoder_dirs[variant]
  rng = np.random.default_rng(2)
  prompts = [rng.integers(3, VOCAB, n) for n in (11, 4, 17)]
  targets = [np.append(rng.integers(3, VOCAB, n), 1) for n in (5, 9, 1)]
  want = _hand_scores(hf_model, prompts, targets)
  module = nnx.merge(loaded.graphdef, loaded.params)
  score = nnx.jit(loaded.model.score_batch)
  # seqio's decoder-only layout: prompt and target in one sequence, weights on the target.
  length = 24
  batch = {k: np.zeros((3, length), np.int32) for k in ("decoder_input_tokens", "decoder_target_tokens")}
  batch["decoder_loss_weights"] = np.zeros((3, length), np.float32)
  for i, (prompt, target) in enumerate(zip(prompts, targets)):
    sequence = np.concatenate([prompt, target])
    batch["decoder_input_tokens"][i, :len(sequence) - 1] = sequence[:-1]
    batch["decoder_target_tokens"][i, :len(sequence) - 1] = sequence[1:]
    batch["decoder_loss_weights"][i, len(prompt) - 1:len(sequence) - 1] = 1.0
  np.testing.assert_allclose(np.asarray(score(module, {k: jnp.asarray(v) for k, v in batch.items()})), want,
                             rtol=1e-5, atol=1e-4)
  # The (inputs, targets) layout evaluators build for encoder-decoders: after the model's start
  # token, as HF's tokenizer puts it (LLaMA: config.json's BOS; Qwen2: none).
  bos = loaded.model.bos_id
  assert bos == (None if variant.startswith("qwen2") else DECODER_KW["bos_token_id"])
  if bos is not None:
    want = _hand_scores(hf_model, [np.concatenate([[bos], p]) for p in prompts], targets)
  pairs = {"encoder_input_tokens": np.zeros((3, 20), np.int32), "decoder_target_tokens": np.zeros((3, 12), np.int32)}
  for i, (prompt, target) in enumerate(zip(prompts, targets)):
    pairs["encoder_input_tokens"][i, :len(prompt)] = prompt
    pairs["decoder_target_tokens"][i, :len(target)] = target
  np.testing.assert_allclose(np.asarray(score(module, {k: jnp.asarray(v) for k, v in pairs.items()})), want,
                             rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2"])
def test_decoder_greedy_matches_transformers_generate(variant, decoder_dirs):
  hf_model, _, loaded = decoder_dirs[variant]
  rng = np.random.default_rng(3)
  prompts = [rng.integers(3, VOCAB, n) for n in (9, 3, 14)]
  steps = 12
  left = np.zeros((3, 14), np.int64)  # transformers wants left padding
  right = np.zeros((3, 14), np.int32)  # sft_jax takes either
  for i, prompt in enumerate(prompts):
    left[i, 14 - len(prompt):] = prompt
    right[i, :len(prompt)] = prompt
  with torch.no_grad():
    generated = hf_model.generate(input_ids=torch.tensor(left),
                                  attention_mask=torch.tensor((left != 0).astype(np.int64)),
                                  max_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=1)
  want = generated.numpy()[:, 14:]
  module = nnx.merge(loaded.graphdef, loaded.params)
  assert loaded.model.eos_ids == (1,)
  got = np.asarray(nnx.jit(lambda m, b: loaded.model.predict_batch(m, b, steps))(
      module, {"decoder_input_tokens": jnp.asarray(right)}))
  for row in range(3):  # both stop at EOS: transformers pads with pad_token_id, sft_jax with 0
    ends = np.flatnonzero(want[row] == 1)
    stop = ends[0] + 1 if len(ends) else want.shape[1]
    np.testing.assert_array_equal(got[row, :stop], want[row, :stop])


@pytest.mark.parametrize("variant", list(DECODER_VARIANTS))
def test_decoder_export_reloads_with_identical_weights(variant, decoder_dirs, tmp_path):
  hf_model, _, loaded = decoder_dirs[variant]
  out = str(tmp_path / "export")
  files = hf_io.save_hf(out, loaded.model.config, loaded.params, base_config=loaded.hf_config,
                        max_shard_bytes=32 << 10 if variant == "llama_gqa" else 5 << 30)
  assert (len(files) > 1) == (variant == "llama_gqa")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(reloaded) is type(hf_model)
  want, got = hf_model.state_dict(), reloaded.state_dict()
  assert set(want) == set(got)
  for name in want:
    assert torch.equal(want[name], got[name]), name
  # config.json carries what the weights do not: RoPE scaling, eps, GQA, tying.
  tokens = np.random.default_rng(4).integers(3, VOCAB, (2, 30))
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))


def test_decoder_export_without_a_source_config(decoder_dirs, tmp_path):
  # A model trained from scratch has no config.json to start from: export writes a complete one.
  hf_model, _, loaded = decoder_dirs["llama_gqa"]
  hf_io.save_hf(str(tmp_path), loaded.model.config, loaded.params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens = np.random.default_rng(5).integers(3, VOCAB, (2, 30))
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))


def test_decoder_convert_tool_round_trip(decoder_dirs, tmp_path):
  rules = decoder_rules()
  spec = importlib.util.spec_from_file_location("convert_hf", _TOOL)
  convert_hf = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(convert_hf)
  hf_model, path, direct = decoder_dirs["qwen2"]
  model_dir = str(tmp_path / "sft")
  convert_hf.main([f"--from_hf={path}", f"--to={model_dir}"])
  model = hf_io.model_from_gin(os.path.join(model_dir, "config.gin"))
  assert model.config == direct.model.config and model.eos_id == direct.model.eos_id
  mesh = partitioning.create_mesh()
  _, params = state_lib.restore_params(checkpoints.Checkpointer(model_dir), 0, model, 0, mesh, rules)
  for got, want in zip(_leaves(params), _leaves(direct.params)):
    np.testing.assert_array_equal(got, want)
  out = str(tmp_path / "hf_out")
  convert_hf.main([f"--from={model_dir}", f"--to_hf={out}"])
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(out)
  for name, tensor in hf_model.state_dict().items():
    assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_decoder_model_from_a_wrapped_operative_config(tmp_path):
  path = tmp_path / "config.gin"
  path.write_text("import sft_jax.models.decoder\nMODEL = @decoder.DecoderOnlyModel()\n"
                  "decoder.DecoderOnlyModel.eos_id = (128001, 128009)\ndecoder.DecoderConfig.num_kv_heads = 1\n"
                  "decoder.DecoderConfig.rope_scaling = (('factor', 8.0), ('high_freq_factor', 4.0),\n"
                  "    ('low_freq_factor', 1.0), ('original_max_position_embeddings', 8192),\n"
                  "    ('rope_type', 'llama3'))\ndecoder.DecoderConfig.d_model = 64\n")
  model = hf_io.model_from_gin(str(path))
  assert model.eos_ids == (128001, 128009) and model.config.d_model == 64 and model.config.num_kv_heads == 1
  assert dict(model.config.rope_scaling)["original_max_position_embeddings"] == 8192


def test_decoder_errors(decoder_dirs, tmp_path):
  _, path, _ = decoder_dirs["llama_gqa"]
  load = lambda p: hf_io.import_hf(p, mesh=partitioning.create_mesh(), rules=decoder_rules())  # noqa: E731
  with pytest.raises(ValueError, match=r"mlp_bias=true is not supported"):
    load(_copy_dir(path, str(tmp_path / "mlp_bias"), edit_config=lambda c: c.update(mlp_bias=True)))
  with pytest.raises(ValueError, match=r"yarn.*not supported"):
    load(_copy_dir(path, str(tmp_path / "yarn"), edit_config=lambda c: c.update(
        rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=1e4))))
  with pytest.raises(KeyError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
    load(_copy_dir(path, str(tmp_path / "missing"),
                   edit_tensors=lambda t: t.pop("model.layers.1.self_attn.k_proj.weight")))
  with pytest.raises(ValueError, match=r"supported: T5ForConditionalGeneration, LlamaForCausalLM, "
                                       r"MistralForCausalLM, Qwen2ForCausalLM"):
    load(_copy_dir(path, str(tmp_path / "gpt2"), edit_config=lambda c: c.update(architectures=["GPT2LMHeadModel"])))

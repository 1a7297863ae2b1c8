"""Hugging Face T5 import/export against `transformers`: logits, weights, sharded and bf16 files, errors."""

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

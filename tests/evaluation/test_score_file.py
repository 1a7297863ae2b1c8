"""tools/score.py and sft_jax.evaluation.score_file: log-likelihoods equal transformers'; bad lines name file:line."""

import importlib.util
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import seqio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sft_jax.evaluation import score_file  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[2]
SPM = _ROOT / "sft_jax" / "data" / "collections" / "synthetic.spm.model"  # 1536 pieces, pad 0, eos 1
EXAMPLES = [
    {"inputs": "Add 3 and 4.", "targets": "7", "id": "a"},
    {"inputs": "Reverse the word: apple " * 6, "targets": "elppa and some longer target text here"},
    {"inputs": "", "targets": ""},
    {"inputs": "Sort: 9 2 5", "targets": "2 5 9", "meta": {"k": [1, 2]}},
    {"inputs": "Copy: x", "targets": "x"},
]


def _load_tool(name):
  spec = importlib.util.spec_from_file_location(name, _ROOT / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny random Flan-T5-shaped transformers model over the synthetic SentencePiece vocabulary."""
  config = transformers.T5Config(
      vocab_size=1536, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
      relative_attention_num_buckets=16, relative_attention_max_distance=16, dropout_rate=0.0,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.lm_head.weight = torch.nn.Parameter(torch.randn(1536, 32))
  path = tmp_path_factory.mktemp("hf")
  model.save_pretrained(str(path))
  shutil.copyfile(SPM, path / "spiece.model")
  return model, str(path)


def _transformers_loglik(model, inputs, targets):
  """Sum of target log-probabilities (targets + EOS), computed by transformers on the same ids."""
  vocab = seqio.SentencePieceVocabulary(str(SPM))
  input_ids = torch.tensor([vocab.encode(inputs) + [1]])
  labels = torch.tensor([vocab.encode(targets) + [1]])
  with torch.no_grad():
    logits = model(input_ids=input_ids, labels=labels).logits
  log_probs = torch.log_softmax(logits.double(), -1)
  return float(log_probs.gather(-1, labels[..., None]).sum()), labels.shape[1]


def _write(path, lines):
  with open(path, "w") as f:
    f.write("".join(line + "\n" for line in lines))
  return str(path)


def test_loglik_equals_transformers_for_hf_and_converted_dirs(hf_dir, tmp_path):
  model, path = hf_dir
  inputs = _write(tmp_path / "in.jsonl", [json.dumps(ex) for ex in EXAMPLES[:2]] + [""] +
                  [json.dumps(ex) for ex in EXAMPLES[2:]])
  out = str(tmp_path / "out.jsonl")
  score = _load_tool("score")
  # Batch 2 over 5 examples: a short last batch, and two input-length buckets.
  summary = score.main([f"--checkpoint={path}", f"--inputs={inputs}", f"--out={out}", "--batch_size=2"])
  rows = [json.loads(line) for line in open(out)]
  assert summary["examples"] == len(rows) == len(EXAMPLES)
  for ex, row in zip(EXAMPLES, rows):
    want, num_tokens = _transformers_loglik(model, ex["inputs"], ex["targets"])
    assert row["num_tokens"] == num_tokens
    assert abs(row["loglik"] - want) <= 1e-3, (row, want)
    assert {k: v for k, v in row.items() if k not in ("loglik", "num_tokens")} == ex

  # The same scores from the model converted to an sft_jax model directory.
  model_dir = str(tmp_path / "sft")
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  hf_io.convert_to_checkpoint(path, model_dir, mesh=mesh, rules=rules)
  out_sft = str(tmp_path / "out_sft.jsonl")
  score_file.score_file(model_dir, inputs, out_sft, mesh=mesh, rules=rules, batch_size=4)
  converted = [json.loads(line) for line in open(out_sft)]
  np.testing.assert_allclose([r["loglik"] for r in converted], [r["loglik"] for r in rows], atol=1e-5)


@pytest.mark.parametrize("line,message", [
    ('{"inputs": "a", "targets": "b"', r"bad\.jsonl:2: not valid JSON"),
    ('["inputs", "targets"]', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"inputs": "a"}', r"bad\.jsonl:2: field 'targets' is missing"),
    ('{"inputs": 3, "targets": "b"}', r"bad\.jsonl:2: field 'inputs' must be a string, got int"),
])
def test_malformed_line_names_file_line_and_field(line, message, tmp_path):
  path = _write(tmp_path / "bad.jsonl", ['{"inputs": "ok", "targets": "ok"}', line])
  with pytest.raises(ValueError, match=message):
    score_file.read_examples(path)


def test_length_limit_and_foreign_vocabulary_are_errors(hf_dir, tmp_path):
  _, path = hf_dir
  inputs = _write(tmp_path / "in.jsonl", ['{"inputs": "a b c d e f", "targets": "x"}'])
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  with pytest.raises(ValueError, match=r"in\.jsonl:1: field 'inputs' has \d+ tokens.*max_input_length=2"):
    score_file.score_file(path, inputs, str(tmp_path / "o.jsonl"), mesh=mesh, rules=rules, max_input_length=2)
  too_big = seqio.ByteVocabulary()  # ids up to 258 fit; shrink the model's view instead
  with pytest.raises(ValueError, match=r"in\.jsonl:1: field 'inputs' encodes to id .* outside"):
    score_file.tokenize(score_file.read_examples(inputs), too_big, inputs, vocab_size=50)
  assert not os.path.exists(tmp_path / "o.jsonl")


# ---- decoder-only: LLaMA (BOS first) and Qwen2 (no BOS) ----------------------------------------

DEC_VOCAB, DEC_BOS, DEC_EOS = 128, 120, 121  # BOS/EOS far from seqio's 0/1, as Llama 3's 128000/128001
DECODER_FAMILIES = {
    # GQA (4 query heads, 2 kv heads), Llama 3.1 RoPE scaling, own head; the tokenizer prepends BOS.
    "llama": ("Llama", dict(num_key_value_heads=2, tie_word_embeddings=False, rope_parameters=dict(
        rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32, rope_theta=10000.0))),
    # q/k/v biases, tied head; config.json names a bos_token_id but the tokenizer adds no BOS.
    "qwen2": ("Qwen2", dict(num_key_value_heads=1, tie_word_embeddings=True)),
}


def _word_tokenizer(path):
  """A word-level tokenizer.json over EXAMPLES' words (+ tokenizer_config.json naming BOS/EOS)."""
  tokenizers = pytest.importorskip("tokenizers")
  pre = tokenizers.pre_tokenizers.Whitespace()
  words = sorted({w for ex in EXAMPLES for f in ("inputs", "targets") for w, _ in pre.pre_tokenize_str(ex[f])})
  vocab = {"[UNK]": 0, **{w: i + 3 for i, w in enumerate(words)}}
  vocab.update({f"<filler{i}>": i for i in range(len(vocab) + 2, DEC_VOCAB) if i not in (DEC_BOS, DEC_EOS)})
  vocab.update({"<pad>": 1, "<unused>": 2, "<s>": DEC_BOS, "</s>": DEC_EOS})
  assert sorted(vocab.values()) == list(range(DEC_VOCAB))
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre
  tokenizer.save(str(path / "tokenizer.json"))
  with open(path / "tokenizer_config.json", "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]", "pad_token": "<pad>"}, f)
  return tokenizer


@pytest.fixture(scope="module", params=list(DECODER_FAMILIES))
def decoder_dir(request, tmp_path_factory):
  """(family, tiny random transformers causal LM, its saved directory with a tokenizer)."""
  family, kw = DECODER_FAMILIES[request.param]
  torch.manual_seed(0)
  config = getattr(transformers, f"{family}Config")(
      vocab_size=DEC_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
      head_dim=8, rms_norm_eps=1e-5, bos_token_id=DEC_BOS, eos_token_id=DEC_EOS, pad_token_id=1, **kw)
  model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        param.add_(0.3 * torch.randn_like(param))
  path = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(str(path), safe_serialization=True)
  return request.param, model, str(path), _word_tokenizer(path)


def _causal_lm_loglik(model, tokenizer, family, inputs, targets):
  """Target log-likelihood as transformers computes it on [BOS (LLaMA)] + prompt + target + EOS."""
  prompt = ([DEC_BOS] if family == "llama" else []) + tokenizer.encode(inputs, add_special_tokens=False).ids
  target = tokenizer.encode(targets, add_special_tokens=False).ids + [DEC_EOS]
  ids = torch.tensor([prompt + target])
  with torch.no_grad():
    log_probs = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
  # Position t predicts token t + 1: the target tokens are predicted from len(prompt) - 1 on.
  picked = log_probs[len(prompt) - 1:-1].gather(-1, torch.tensor(target)[:, None])
  return float(picked.sum()), len(target)


def test_decoder_only_loglik_equals_transformers(decoder_dir, tmp_path):
  family, model, path, tokenizer = decoder_dir
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  loaded = hf_io.import_hf(path, mesh=mesh, rules=rules)
  assert loaded.model.bos_id == (DEC_BOS if family == "llama" else None)
  # Without a start token an empty prompt leaves the first target token unpredictable: an error.
  examples = [ex for ex in EXAMPLES if family == "llama" or ex["inputs"]]
  inputs = _write(tmp_path / "in.jsonl", [json.dumps(ex) for ex in examples])
  out = str(tmp_path / "out.jsonl")
  summary = _load_tool("score").main([f"--checkpoint={path}", f"--inputs={inputs}", f"--out={out}",
                                      "--batch_size=2"])
  rows = [json.loads(line) for line in open(out)]
  assert summary["examples"] == len(rows) == len(examples)
  diffs = []
  for ex, row in zip(examples, rows):
    want, num_tokens = _causal_lm_loglik(model, tokenizer, family, ex["inputs"], ex["targets"])
    assert row["num_tokens"] == num_tokens
    diffs.append(abs(row["loglik"] - want))
    assert diffs[-1] <= 1e-3, (row, want)
  print(f"{family}: max |loglik - transformers| = {max(diffs):.2e}")

  # The converted sft_jax model directory keeps the start token (gin) and so the scores.
  model_dir = str(tmp_path / "sft")
  hf_io.convert_to_checkpoint(path, model_dir, mesh=mesh, rules=rules)
  assert hf_io.load_model_dir(model_dir, mesh=mesh, rules=rules).model.bos_id == loaded.model.bos_id
  out_sft = str(tmp_path / "out_sft.jsonl")
  score_file.score_file(model_dir, inputs, out_sft, mesh=mesh, rules=rules, batch_size=4)
  converted = [json.loads(line) for line in open(out_sft)]
  np.testing.assert_allclose([r["loglik"] for r in converted], [r["loglik"] for r in rows], atol=1e-5)

  if family == "qwen2":
    empty = _write(tmp_path / "empty.jsonl", ['{"inputs": "", "targets": "x"}'])
    with pytest.raises(ValueError, match=r"empty\.jsonl:1: field 'inputs' is empty.*no start token"):
      score_file.score_file(path, empty, str(tmp_path / "o.jsonl"), mesh=mesh, rules=rules)

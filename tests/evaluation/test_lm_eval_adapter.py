"""lm-eval's own evaluator with the "sft_jax" backend, on local tasks: scores equal score_file's and
transformers', accuracy is the argmax of those scores, generations are the project's greedy decoding."""

import importlib.util
import json
import os
import pathlib
import shutil
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before lm-eval imports datasets
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flax import nnx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402
import yaml  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
lm_eval = pytest.importorskip("lm_eval")

import lm_eval.tasks  # noqa: E402
import lm_eval.utils  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from sft_jax.evaluation import lm_eval_adapter  # noqa: E402
from sft_jax.evaluation import score_file  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[2]
SPM = _ROOT / "sft_jax" / "data" / "collections" / "synthetic.spm.model"  # 1536 pieces, pad 0, eos 1
T5_EOS = 1
LLAMA_VOCAB, LLAMA_BOS, LLAMA_EOS = 128, 120, 121
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

MC_DOCS = [
    {"question": "Question : add 3 and 4 . Answer :", "choices": ["7", "8", "nine"], "answer": 0},
    {"question": "Question : what colour is the sky ? Answer :", "choices": ["blue", "green"], "answer": 0},
    {"question": "Copy the word apple . Answer :", "choices": ["apple", "pear", "plum"], "answer": 2},
]
GEN_DOCS = [
    {"question": "Reverse : a b c", "answer": "c b a"},
    {"question": "Sort the numbers 9 2 5 and say them all", "answer": "2 5 9"},
    {"question": "Hello", "answer": "world"},
]
MAX_GEN_TOKS = 6


def _words():
  pre = tokenizers.pre_tokenizers.Whitespace()
  texts = [d["question"] for d in MC_DOCS + GEN_DOCS] + [c for d in MC_DOCS for c in d["choices"]] + [
      d["answer"] for d in GEN_DOCS] + ["user", "assistant", "system", "hi", "there"]
  return sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})


def _word_tokenizer(path):
  """A word-level tokenizer.json: every id below 128 is a whole word, so greedy outputs re-encode to themselves."""
  words = _words()
  vocab = {"[UNK]": 0, "<pad>": 1, "<s>": LLAMA_BOS, "</s>": LLAMA_EOS, "<|im_start|>": 122, "<|im_end|>": 123}
  free = [i for i in range(LLAMA_VOCAB) if i not in vocab.values()]
  vocab.update({w: i for w, i in zip(words, free)})
  vocab.update({f"w{i}": i for i in free[len(words):]})
  assert sorted(vocab.values()) == list(range(LLAMA_VOCAB))
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
  tokenizer.save(str(path / "tokenizer.json"))
  with open(path / "tokenizer_config.json", "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]", "pad_token": "<pad>",
               "chat_template": CHATML, "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{family: (transformers model, its directory, encode(text) -> ids)} for a tiny Flan-T5 and a tiny Llama."""
  torch.manual_seed(0)
  t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=1536, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
      relative_attention_num_buckets=16, relative_attention_max_distance=16, dropout_rate=0.0,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)).eval()
  t5.lm_head.weight = torch.nn.Parameter(torch.randn(1536, 32))
  t5_dir = tmp_path_factory.mktemp("t5")
  t5.save_pretrained(str(t5_dir))
  shutil.copyfile(SPM, t5_dir / "spiece.model")
  spm = seqio.SentencePieceVocabulary(str(SPM))

  torch.manual_seed(0)
  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=LLAMA_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, bos_token_id=LLAMA_BOS, eos_token_id=LLAMA_EOS,
      pad_token_id=1, tie_word_embeddings=False)).eval()
  with torch.no_grad():
    for name, param in llama.named_parameters():
      if "norm" in name:
        param.add_(0.3 * torch.randn_like(param))
  llama_dir = tmp_path_factory.mktemp("llama")
  llama.save_pretrained(str(llama_dir), safe_serialization=True)
  words = _word_tokenizer(llama_dir)
  return {"t5": (t5, str(t5_dir), lambda text: list(spm.encode(text))),
          "llama": (llama, str(llama_dir), lambda text: words.encode(text, add_special_tokens=False).ids)}


@pytest.fixture(scope="module")
def adapters(models):
  return {family: lm_eval_adapter.SftJaxLM(checkpoint=path, batch_size=2, max_gen_toks=MAX_GEN_TOKS)
          for family, (_, path, _) in models.items()}


def _reference_pairs(family, encode, arguments):
  """(context, continuation) ids as lm-eval's HF backends make them, from the tokenizer itself."""
  if family == "t5":  # T5's tokenizer appends EOS to the encoder input only
    return [(encode(context) + [T5_EOS], encode(continuation)) for context, continuation in arguments]
  return [(encode(context), encode(continuation)) for context, continuation in arguments]


def _torch_scores(family, model, pairs):
  """(log p(continuation), is_greedy) by transformers in float64: Llama on [BOS] + context + continuation."""
  out = []
  with torch.no_grad():
    for context, continuation in pairs:
      target = torch.tensor(continuation)
      if family == "t5":
        logits = model(input_ids=torch.tensor([context]), labels=target[None]).logits[0]
      else:
        ids = [LLAMA_BOS] + context + continuation
        logits = model(input_ids=torch.tensor([ids])).logits[0, len(context):-1]
      log_probs = torch.log_softmax(logits.double(), -1)
      out.append((float(log_probs.gather(-1, target[:, None]).sum()),
                  bool((logits.argmax(-1) == target).all())))
  return out


def _greedy_texts(family, loaded, vocab, encode, prompts, length):
  """The project's greedy decoding (`predict_batch`) of all prompts in one right-padded batch, as text."""
  rows = [encode(p) + [T5_EOS] if family == "t5" else [LLAMA_BOS] + encode(p) for p in prompts]
  tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  key = "encoder_input_tokens" if family == "t5" else "decoder_input_tokens"
  module = nnx.merge(loaded.graphdef, loaded.params)
  out = np.asarray(nnx.jit(lambda m, t: loaded.model.predict_batch(m, {key: t}, length))(module, jnp.asarray(tokens)))
  eos = T5_EOS if family == "t5" else LLAMA_EOS
  texts = []
  for row in out:
    ends = np.flatnonzero(row == eos)
    texts.append(vocab.decode((row[:ends[0]] if len(ends) else row).tolist()))
  return texts


def _write_tasks(tmp_path, until):
  for name, docs in (("mc", MC_DOCS), ("gen", GEN_DOCS)):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      f.write("".join(json.dumps(d) + "\n" for d in docs))
  common = {"dataset_path": "json", "test_split": "test", "doc_to_text": "{{question}}"}
  tasks = {
      "toy_mc": {**common, "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
                 "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}],
                 "dataset_kwargs": {"data_files": {"test": str(tmp_path / "mc.jsonl")}}},
      "toy_gen": {**common, "output_type": "generate_until", "doc_to_target": "{{answer}}",
                  "generation_kwargs": {"until": until, "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
                  "metric_list": [{"metric": "exact_match"}],
                  "dataset_kwargs": {"data_files": {"test": str(tmp_path / "gen.jsonl")}}},
  }
  task_dir = tmp_path / "tasks"
  task_dir.mkdir()
  for name, config in tasks.items():
    with open(task_dir / f"{name}.yaml", "w") as f:
      yaml.safe_dump({"task": name, **config}, f)
  return str(task_dir)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_simple_evaluate_matches_score_file_transformers_and_greedy_decoding(family, models, adapters, tmp_path):
  hf_model, path, encode = models[family]
  adapter = adapters[family]
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  loaded = hf_io.load_model_dir(path, mesh=mesh, rules=rules)

  # A stop string from the middle of the longest greedy output, so some outputs are really cut.
  prompts = [d["question"] for d in GEN_DOCS]
  raw = _greedy_texts(family, loaded, adapter.vocabulary, encode, prompts, MAX_GEN_TOKS)
  longest = max(raw, key=len)
  middle = sorted(range(1, len(longest) - 2), key=lambda i: abs(i - len(longest) // 2))
  stop = next(longest[i:i + 2] for i in middle if longest[i:i + 2].isalnum())
  task_dir = _write_tasks(tmp_path, [stop])

  results = lm_eval.simple_evaluate(
      model=adapter, tasks=["toy_mc", "toy_gen"], log_samples=True, bootstrap_iters=0,
      task_manager=lm_eval.tasks.TaskManager(include_path=task_dir, include_defaults=False))

  # Multiple choice: every (context, continuation) lm-eval asked for, scored as score_file scores.
  samples = sorted(results["samples"]["toy_mc"], key=lambda s: s["doc_id"])
  arguments = [tuple(a) for s in samples for a in s["arguments"]]
  got = [tuple(r) for s in samples for r in s["filtered_resps"]]
  pairs = _reference_pairs(family, encode, arguments)
  # The adapter's batch size: the same rows in the same batches, so the sums agree to the last bit.
  want = score_file.score_pairs(loaded, [tuple(np.asarray(x, np.int32) for x in p) for p in pairs], mesh=mesh,
                                rules=rules, batch_size=2)
  print(f"{family}: max |adapter - score_file| = {np.abs(np.array([ll for ll, _ in got]) - want).max():.1e}")
  np.testing.assert_allclose([ll for ll, _ in got], want, rtol=0, atol=1e-5)
  hand = _torch_scores(family, hf_model, pairs)
  np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in hand], rtol=0, atol=1e-4)
  assert [g for _, g in got] == [g for _, g in hand]
  # Accuracy: the hand-computed argmax over those log-likelihoods.
  flat = iter(want)
  correct = [int(np.argmax([next(flat) for _ in d["choices"]]) == d["answer"]) for d in MC_DOCS]
  assert results["results"]["toy_mc"]["acc,none"] == pytest.approx(np.mean(correct))

  # Generation: the project's greedy decoding, cut at the stop string.
  gen = sorted(results["samples"]["toy_gen"], key=lambda s: s["doc_id"])
  assert [s["arguments"][0][0] for s in gen] == prompts
  want_texts = [text.split(stop)[0] for text in raw]
  assert [s["filtered_resps"][0] for s in gen] == want_texts
  assert any(len(w) < len(r) for w, r in zip(want_texts, raw)), (raw, stop)
  assert results["results"]["toy_gen"]["exact_match,none"] == pytest.approx(
      np.mean([w == d["answer"] for w, d in zip(want_texts, GEN_DOCS)]))


def _requests(kind, arguments):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in arguments]


def test_is_greedy_for_the_greedy_continuation_and_empty_context(models, adapters):
  hf_model, _, encode = models["llama"]
  adapter = adapters["llama"]
  context = "Question : add 3 and 4 . Answer :"
  ids = [LLAMA_BOS] + encode(context)
  with torch.no_grad():  # two greedy steps by transformers
    for _ in range(2):
      ids.append(int(hf_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
  greedy = " " + adapter.tok_decode(ids[-2:])
  assert encode(greedy) == ids[-2:]
  other = " " + adapter.tok_decode([ids[-2], (ids[-1] + 1) % 100 + 2])
  arguments = [(context, greedy), (context, other), ("", greedy.strip()), (context + " ", greedy.strip())]
  got = adapter.loglikelihood(_requests("loglikelihood", arguments))
  want = _torch_scores("llama", hf_model, [(encode(c), encode(x)) for c, x in arguments])
  np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in want], rtol=0, atol=1e-4)
  assert [g for _, g in got] == [True, False, want[2][1], True]
  # A trailing space of the context moves to the continuation: the same request as the first.
  assert got[3][0] == pytest.approx(got[0][0], abs=1e-6)


def test_loglikelihood_rolling_equals_transformers(models, adapters):
  text = " ".join(d["question"] for d in MC_DOCS)
  # Llama: one window (the whole text after BOS), then windows of 8 rows.
  hf_model, path, encode = models["llama"]
  tokens = encode(text)
  assert len(tokens) > 20
  whole = _torch_scores("llama", hf_model, [([], tokens)])[0][0]
  [got] = adapters["llama"].loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
  assert got == pytest.approx(whole, abs=1e-4)
  small = lm_eval_adapter.SftJaxLM(checkpoint=path, batch_size=2, max_length=8)
  [got_small] = small.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
  # lm-eval's windows of 7 tokens after the start token (8 model inputs), every token predicted once.
  windows = [lm_eval.utils.make_disjoint_window(w) for w in lm_eval.utils.get_rolling_token_windows(
      tokens, prefix_token=LLAMA_EOS, max_seq_len=7, context_len=1)]
  windows[0] = ([], windows[0][1])
  assert sum(len(c) for _, c in windows) == len(tokens) and len(windows) > 2
  want_small = sum(ll for ll, _ in _torch_scores("llama", hf_model, windows))
  assert got_small == pytest.approx(want_small, abs=1e-4)
  assert abs(got_small - whole) > 1e-3  # shorter contexts do change the score

  # T5: the decoder scores text + EOS; the encoder reads EOS alone (an empty input).
  hf_model, _, encode = models["t5"]
  [got] = adapters["t5"].loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
  assert got == pytest.approx(_torch_scores("t5", hf_model, [([T5_EOS], encode(text) + [T5_EOS])])[0][0], abs=1e-4)


def test_chat_template_renders_as_transformers(models, adapters):
  _, path, _ = models["llama"]
  adapter = adapters["llama"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  history = [{"role": "system", "content": "hi"}, {"role": "user", "content": "add 3 and 4"}]
  assert adapter.chat_template(True) == CHATML
  assert adapter.apply_chat_template(history) == tokenizer.apply_chat_template(
      history, tokenize=False, add_generation_prompt=True)
  # An assistant prefill stays open, as lm-eval's HF backend renders it.
  prefill = history + [{"role": "assistant", "content": "Answer :"}]
  assert adapter.apply_chat_template(prefill, add_generation_prompt=False) == tokenizer.apply_chat_template(
      prefill, tokenize=False, continue_final_message=True)
  # The built-in ChatML template renders the same text.
  assert adapter.chat_template("chatml") == "chatml"
  assert adapter.apply_chat_template(history) == tokenizer.apply_chat_template(
      history, tokenize=False, add_generation_prompt=True)
  # Llama 3's markers are not tokens of this vocabulary: an error, not silently split text.
  adapter.chat_template("llama3")
  with pytest.raises(ValueError, match="special token '<\\|begin_of_text\\|>'.*not one token"):
    adapter.apply_chat_template(history)


def test_sampling_is_refused(adapters):
  with pytest.raises(NotImplementedError, match="sampling"):
    adapters["t5"].generate_until(_requests("generate_until", [("Hello", {"do_sample": True, "temperature": 0.7})]))


def test_run_lm_eval_tool_is_lm_evals_command_line(models, adapters, tmp_path, monkeypatch):
  _, path, _ = models["t5"]
  task_dir = _write_tasks(tmp_path, ["."])
  spec = importlib.util.spec_from_file_location("run_lm_eval", _ROOT / "tools" / "run_lm_eval.py")
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  out = tmp_path / "out"
  monkeypatch.setattr(sys, "argv", ["run_lm_eval.py"])  # the tool hands lm-eval its own argv
  # JAX already runs in this process: a single-process run initializes nothing.
  monkeypatch.setattr(tool.distributed, "initialize", lambda: False)
  tool.main(["--model", "sft_jax", "--model_args", f"pretrained={path},max_gen_toks={MAX_GEN_TOKS}",
             "--tasks", "toy_gen", "--include_path", task_dir, "--batch_size", "2", "--limit", "2",
             "--log_samples", "--output_path", str(out)])
  [results_file] = out.glob("*/results_*.json")
  [samples_file] = out.glob("*/samples_toy_gen_*.jsonl")
  assert results_file.parent.name.endswith(os.path.basename(path))  # filed under the model's name
  results = json.loads(results_file.read_text())
  assert results["config"]["model"] == "sft_jax" and str(results["config"]["batch_size"]) == "2"
  assert results["n-samples"]["toy_gen"]["effective"] == 2
  samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
  arguments = [s["arguments"]["gen_args_0"] for s in samples]  # lm-eval's file layout of (context, gen_kwargs)
  requests = _requests("generate_until", [(a["arg_0"], a["arg_1"]) for a in arguments])
  assert [s["filtered_resps"][0] for s in samples] == adapters["t5"].generate_until(requests)

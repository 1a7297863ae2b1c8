"""Tokens/s of sft_jax's jitted greedy decoding, and examples/s of its rank classification,
against `transformers` on the same T5.

  python benchmarks/decode.py [--batch_size=8] [--input_length=64] [--new_tokens=32] [--rounds=5]
                              [--rank_examples_per_task=32]
  python benchmarks/decode.py --smoke      # tiny sizes, one round: checks that it runs

The network has the sizes of gin_configs/models/t5_quickstart.gin (a T5 v1.1 with its own head)
without absolute positions (Hugging Face T5 has none). It is built as a seeded random
`transformers` T5ForConditionalGeneration, saved as safetensors and imported with
sft_jax.models.hf_io, so both systems hold the same weights. Both decode the same batch of random
prompts (lengths between half and all of --input_length, padded) greedily for up to --new_tokens
tokens, ending rows at EOS: sft_jax through `EncoderDecoderModel.predict_batch` (KV cache,
`lax.while_loop`, jitted once), transformers through `generate(do_sample=False, num_beams=1)`
(its KV cache, eager torch on CPU with 2 threads). After one warm-up call each, --rounds rounds of
--calls calls alternate between the systems (the order flips every round); the table gives the
median seconds per call and generated tokens per second (tokens up to and including each row's
EOS); ratio = sft_jax / transformers. `rows_equal` counts rows whose tokens agree to EOS.

Rank classification: the first --rank_examples_per_task test examples of every classification task
the synthetic_instructions mixture declares for evaluation, loaded as the evaluator loads them
(`evaluator.load_eval_set`), batch 128, input length 96, target length 16 (as
gin_configs/runs/quickstart_eval.gin). sft_jax ranks them with the evaluator's own
`CheckpointScorer.rank_choices` over the imported parameters (each prompt encoded once and its
choices + EOS decoded against it by a jitted `score_choices`, prompts sorted by length into
fixed-shape batches of about 128 decoder rows);
transformers scores the same pairs in the same batches of 128 (rows laid out by
`packing.pad_unpacked`, but padded only to each batch's longest prompt and choice, as eager torch
allows) with one forward pass per batch, summing the choice tokens' log-probabilities. Both take
each example's most likely choice by summed log-likelihood. One warm-up call each (sft_jax
compiles), then --rounds alternating rounds of one call; examples/s = examples / median seconds
per call; `rank_agreement` is the fraction of examples where both pick the same choice.

Each comparison is one function returning its JSON entry. Prints a table and, last, one JSON
line. Needs torch and transformers (the [test] extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flax import nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import sft_jax.data.collections.synthetic  # noqa: E402,F401  (registers synthetic_instructions)
from sft_jax.data import packing  # noqa: E402
from sft_jax.evaluation import evaluator  # noqa: E402
from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402
from sft_jax.train import state as state_lib  # noqa: E402

_QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "gin_configs" / "models" / "t5_quickstart.gin"
EOS_ID = 1
TORCH_THREADS = 2
RANK_MIXTURE = "synthetic_instructions"
# The evaluation shapes of gin_configs/runs/quickstart_eval.gin.
RANK_BATCH_SIZE, RANK_INPUT_LENGTH, RANK_TARGET_LENGTH = 128, 96, 16


@dataclasses.dataclass
class Models:
  """The same T5 in both systems."""
  hf_model: transformers.T5ForConditionalGeneration
  loaded: hf_io.LoadedModel
  params: int


def build_models(seed: int = 0) -> Models:
  """A seeded random transformers T5 of the quickstart sizes, and its hf_io import."""
  config = hf_io.t5_model_from_gin(str(_QUICKSTART)).config
  hf_config = transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.head_dim, d_ff=config.d_ff,
      num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      num_heads=config.num_heads, feed_forward_proj=config.feed_forward_proj,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      layer_norm_epsilon=config.layer_norm_epsilon, dropout_rate=0.0, tie_word_embeddings=False,
      decoder_start_token_id=0, eos_token_id=EOS_ID, pad_token_id=0)
  torch.manual_seed(seed)
  hf_model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with torch.no_grad():  # T5 v1.1's own head (transformers 5 ties it to the embedding otherwise)
    head = torch.randn(config.vocab_size, config.d_model) * config.d_model ** -0.5
    hf_model.lm_head.weight = torch.nn.Parameter(head)
  with tempfile.TemporaryDirectory() as directory:
    hf_model.save_pretrained(directory)
    loaded = hf_io.import_hf(directory, mesh=partitioning.create_mesh(), rules=partitioning.logical_axis_rules())
  return Models(hf_model, loaded, sum(p.numel() for p in hf_model.parameters()))


def random_prompts(batch_size: int, input_length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
  """[batch, input_length] int32 prompts of random tokens, each padded after a random length."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab_size, (batch_size, input_length)).astype(np.int32)
  for row, length in enumerate(rng.integers(max(1, input_length // 2), input_length + 1, batch_size)):
    tokens[row, length:] = 0
  return tokens


def generated_tokens(rows_BxT: np.ndarray) -> int:
  """Tokens each row generated, up to and including its first EOS."""
  total = 0
  for row in rows_BxT:
    ends = np.flatnonzero(row == EOS_ID)
    total += ends[0] + 1 if len(ends) else len(row)
  return int(total)


def _alternate(runners: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, list[float]]:
  """Seconds per call of each runner, `rounds` times, alternating (the order flips every round)."""
  seconds: dict[str, list[float]] = {name: [] for name in runners}
  names = list(runners)
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      start = time.perf_counter()
      for _ in range(calls):
        runners[name]()
      seconds[name].append((time.perf_counter() - start) / calls)
  return seconds


def compare_greedy_generation(models: Models, args: argparse.Namespace) -> dict[str, Any]:
  """Median seconds per greedy `generate` call and generated tokens/s, sft_jax vs transformers."""
  prompts = random_prompts(args.batch_size, args.input_length, models.loaded.model.config.vocab_size)
  model, graphdef = models.loaded.model, models.loaded.graphdef
  predict = jax.jit(lambda params, tokens: model.predict_batch(
      nnx.merge(graphdef, params), {"encoder_input_tokens": tokens}, args.new_tokens))
  device_prompts = jnp.asarray(prompts)
  input_ids = torch.from_numpy(prompts.astype(np.int64))
  attention_mask = (input_ids != 0).long()

  def run_sft_jax():
    return np.asarray(jax.block_until_ready(predict(models.loaded.params, device_prompts)))

  def run_hf():
    with torch.no_grad():
      out = models.hf_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     max_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                                     eos_token_id=EOS_ID, pad_token_id=0)
    return out[:, 1:].numpy()  # after the decoder start token

  torch.set_num_threads(TORCH_THREADS)
  start = time.perf_counter()
  ours = run_sft_jax()  # compiles
  compile_seconds = time.perf_counter() - start
  theirs = run_hf()
  rows_equal = 0
  for got, want in zip(ours, theirs):
    ends = np.flatnonzero(want == EOS_ID)
    stop = ends[0] + 1 if len(ends) else len(want)
    rows_equal += int(np.array_equal(got[:stop], want[:stop]) and not got[stop:].any())

  seconds = _alternate({"sft_jax": run_sft_jax, "hf": run_hf}, args.rounds, args.calls)
  out = {"batch_size": args.batch_size, "input_length": args.input_length, "new_tokens": args.new_tokens,
         "rounds": args.rounds, "calls_per_round": args.calls, "rows_equal": rows_equal,
         "sft_jax_compile_seconds": compile_seconds, "torch_threads": torch.get_num_threads()}
  for name, tokens in (("sft_jax", generated_tokens(ours)), ("hf", generated_tokens(theirs))):
    median = statistics.median(seconds[name])
    out[name] = {"seconds_per_call": median, "seconds_per_call_rounds": seconds[name],
                 "generated_tokens_per_call": tokens, "tokens_per_second": tokens / median}
  out["ratio"] = out["sft_jax"]["tokens_per_second"] / out["hf"]["tokens_per_second"]
  return out


def classification_examples(examples_per_task: int) -> tuple[list[evaluator.EvalExample], int, Any]:
  """(examples, number of tasks, targets' vocabulary) of the mixture's classification eval tasks."""
  split_decl, examples, vocab = evaluator.load_eval_set(RANK_MIXTURE, "test", examples_per_task, RANK_INPUT_LENGTH)
  tasks = [t.task_name for t in split_decl.eval_tasks if t.kind == "classification"]
  return [ex for name in tasks for ex in examples[name]], len(tasks), vocab


def hf_choice_logliks(hf_model: transformers.T5ForConditionalGeneration, examples: list[evaluator.EvalExample],
                      vocab: Any) -> list[np.ndarray]:
  """Summed log-likelihood of each example's choices (tokens and EOS) under transformers' T5."""
  pairs, sizes = [], []
  for ex in examples:
    for choice in ex.answer_choices:
      pairs.append((ex.inputs, np.array(vocab.encode(choice) + [vocab.eos_id], np.int32)))
    sizes.append(len(ex.answer_choices))
  loglik = np.zeros(len(pairs))
  # The scorer's batches: pairs sorted by prompt length, RANK_BATCH_SIZE at a time.
  order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]))
  for start in range(0, len(order), RANK_BATCH_SIZE):
    chunk = order[start:start + RANK_BATCH_SIZE]
    rows = packing.pad_unpacked([{"inputs": pairs[k][0], "targets": pairs[k][1]} for k in chunk],
                                min(RANK_INPUT_LENGTH, max(len(pairs[k][0]) for k in chunk)),
                                min(RANK_TARGET_LENGTH, max(len(pairs[k][1]) for k in chunk)))
    inputs, decoder_inputs, targets = (torch.from_numpy(rows[name].astype(np.int64)) for name in (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"))
    with torch.no_grad():
      logits = hf_model(input_ids=inputs, attention_mask=(inputs != 0).long(),
                        decoder_input_ids=decoder_inputs).logits
      token_logprobs = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
      loglik[chunk] = (token_logprobs * (targets != 0)).sum(-1).double().numpy()
  bounds = np.cumsum([0] + sizes)
  return [loglik[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def hf_rank_choices(hf_model: transformers.T5ForConditionalGeneration, examples: list[evaluator.EvalExample],
                    vocab: Any) -> list[str]:
  """The most likely choice per example under transformers' T5 (summed log-likelihood)."""
  return [ex.answer_choices[evaluator.pick_choice(ll, np.ones_like(ll))]
          for ex, ll in zip(examples, hf_choice_logliks(hf_model, examples, vocab))]


def compare_rank_classification(models: Models, args: argparse.Namespace) -> dict[str, Any]:
  """Median seconds per rank classification of the classification eval examples and examples/s,
  sft_jax's evaluator vs transformers."""
  examples, num_tasks, vocab = classification_examples(args.rank_examples_per_task)
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  torch.set_num_threads(TORCH_THREADS)
  with state_lib.mesh_context(mesh, rules):
    scorer = evaluator.CheckpointScorer(models.loaded.model, models.loaded.graphdef, models.loaded.params, mesh,
                                        RANK_BATCH_SIZE, RANK_INPUT_LENGTH, RANK_TARGET_LENGTH)

    def run_sft_jax():
      return scorer.rank_choices(examples, vocab)

    def run_hf():
      return hf_rank_choices(models.hf_model, examples, vocab)

    start = time.perf_counter()
    ours = run_sft_jax()  # compiles
    compile_seconds = time.perf_counter() - start
    theirs = run_hf()
    ours_ll = np.concatenate([ll for ll, _ in scorer.choice_logliks(examples, vocab)])
    theirs_ll = np.concatenate(hf_choice_logliks(models.hf_model, examples, vocab))
    seconds = _alternate({"sft_jax": run_sft_jax, "hf": run_hf}, args.rounds, 1)
  out = {"mixture": RANK_MIXTURE, "split": "test", "tasks": num_tasks,
         "examples_per_task": args.rank_examples_per_task, "examples": len(examples),
         "pairs": sum(len(ex.answer_choices) for ex in examples), "batch_size": RANK_BATCH_SIZE,
         "input_length": RANK_INPUT_LENGTH, "target_length": RANK_TARGET_LENGTH, "rounds": args.rounds,
         "agreement": float(np.mean([a == b for a, b in zip(ours, theirs)])),
         "max_abs_loglik_diff": float(np.max(np.abs(ours_ll - theirs_ll))),
         "sft_jax_compile_seconds": compile_seconds, "torch_threads": torch.get_num_threads()}
  for name in ("sft_jax", "hf"):
    median = statistics.median(seconds[name])
    out[name] = {"seconds_per_call": median, "seconds_per_call_rounds": seconds[name],
                 "examples_per_second": len(examples) / median}
  out["ratio"] = out["sft_jax"]["examples_per_second"] / out["hf"]["examples_per_second"]
  return out


def print_generation_table(result: dict[str, Any], models: Models) -> None:
  """A readable table of `compare_greedy_generation`'s result."""
  print(f"greedy generation: T5 of gin_configs/models/t5_quickstart.gin sizes without absolute positions "
        f"({models.params:,} params), random weights; batch {result['batch_size']} x {result['input_length']} "
        f"prompt tokens, up to {result['new_tokens']} new tokens, EOS ends a row")
  print(f"sft_jax {jax.__version__} ({jax.devices()[0].platform}, jit compile "
        f"{result['sft_jax_compile_seconds']:.1f}s) vs transformers {transformers.__version__} + torch "
        f"{torch.__version__} ({result['torch_threads']} threads); median of {result['rounds']} alternating "
        f"rounds x {result['calls_per_round']} calls; rows equal to EOS: {result['rows_equal']}/{result['batch_size']}")
  print(f"{'system':<24}{'s/call':>10}{'tokens/call':>13}{'tokens/s':>11}  s/call per round")
  for label, key in (("sft_jax (jit)", "sft_jax"), ("transformers generate", "hf")):
    r = result[key]
    print(f"{label:<24}{r['seconds_per_call']:>10.4f}{r['generated_tokens_per_call']:>13}"
          f"{r['tokens_per_second']:>11.0f}  {' '.join(f'{x:.4f}' for x in r['seconds_per_call_rounds'])}")
  print(f"sft_jax / transformers generated tokens per second: {result['ratio']:.2f}x")


def print_rank_table(result: dict[str, Any]) -> None:
  """A readable table of `compare_rank_classification`'s result."""
  print(f"rank classification examples/s: {result['examples']} test examples ({result['examples_per_task']} per task) "
        f"of the {result['tasks']} classification tasks of {result['mixture']}, {result['pairs']} (prompt, choice) "
        f"pairs in batches of {result['batch_size']}; sft_jax CheckpointScorer.rank_choices (jit compile "
        f"{result['sft_jax_compile_seconds']:.1f}s) vs transformers forward passes "
        f"({result['torch_threads']} threads); median of {result['rounds']} alternating rounds")
  print(f"same choice: {result['agreement']:.4f} of examples; largest |loglik difference| "
        f"{result['max_abs_loglik_diff']:.2e}")
  print(f"{'system':<24}{'s/call':>10}{'examples/call':>15}{'examples/s':>12}  s/call per round")
  for label, key in (("sft_jax rank_choices", "sft_jax"), ("transformers forward", "hf")):
    r = result[key]
    print(f"{label:<24}{r['seconds_per_call']:>10.4f}{result['examples']:>15}{r['examples_per_second']:>12.0f}  "
          f"{' '.join(f'{x:.4f}' for x in r['seconds_per_call_rounds'])}")
  print(f"sft_jax / transformers rank classification examples per second: {result['ratio']:.2f}x")


def main(argv: list[str]) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5, help="alternating sft_jax/transformers rounds")
  parser.add_argument("--calls", type=int, default=5, help="timed calls per system and round")
  parser.add_argument("--rank_examples_per_task", type=int, default=32,
                      help="test examples of each classification task to rank")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes and one round, to check it runs")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch_size, args.input_length, args.new_tokens, args.rounds, args.calls = 2, 16, 4, 1, 1
    args.rank_examples_per_task = 2

  models = build_models()
  generation = compare_greedy_generation(models, args)
  print_generation_table(generation, models)
  rank = compare_rank_classification(models, args)
  print_rank_table(rank)
  summary = {"benchmark": "decode", "sft_jax_tokens_per_s": generation["sft_jax"]["tokens_per_second"],
             "hf_tokens_per_s": generation["hf"]["tokens_per_second"], "ratio": generation["ratio"],
             "rows_equal": generation["rows_equal"],
             "rank_examples_per_s": rank["sft_jax"]["examples_per_second"],
             "hf_rank_examples_per_s": rank["hf"]["examples_per_second"], "rank_ratio": rank["ratio"],
             "rank_agreement": rank["agreement"], "generation": generation, "rank_classification": rank}
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])

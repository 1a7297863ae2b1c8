"""Tokens/s of sft_jax's jitted greedy decoding against `transformers` `generate` on the same T5.

  python benchmarks/decode.py [--batch_size=8] [--input_length=64] [--new_tokens=32] [--rounds=5]
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

from sft_jax.models import hf_io  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402

_QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "gin_configs" / "models" / "t5_quickstart.gin"
EOS_ID = 1
TORCH_THREADS = 2


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


def main(argv: list[str]) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5, help="alternating sft_jax/transformers rounds")
  parser.add_argument("--calls", type=int, default=5, help="timed calls per system and round")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes and one round, to check it runs")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch_size, args.input_length, args.new_tokens, args.rounds, args.calls = 2, 16, 4, 1, 1

  models = build_models()
  generation = compare_greedy_generation(models, args)
  print_generation_table(generation, models)
  summary = {"benchmark": "decode", "sft_jax_tokens_per_s": generation["sft_jax"]["tokens_per_second"],
             "hf_tokens_per_s": generation["hf"]["tokens_per_second"], "ratio": generation["ratio"],
             "rows_equal": generation["rows_equal"], "generation": generation}
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])

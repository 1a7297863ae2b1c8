"""Token efficiency and speed of sft_jax's best-fit packer vs seqio's next-fit packer.

  python benchmarks/packing.py [--num_examples=20000] [--buffer_size=1024]

A fixed-seed stream of decoder-only examples with long-tailed lengths (lognormal,
median 150 tokens, tail to several thousand, like Alpaca/Dolly), each a prompt
and a response ending in EOS, is packed into rows of 512 and 2048 tokens by
  sft_jax: packing.BestFitRowPacker over the numpy examples (loss weights and
    decoder inputs included), and
  seqio: seqio.utils.trim_and_pack_dataset over a tf.data dataset of the same
    sequences (prompt + response), which is what DecoderFeatureConverter(pack=True)
    runs; its packing depends only on lengths, so the width features that
    converter also carries are left out, which can only make seqio faster here.
Token efficiency is non-padding tokens / token slots. Over-long examples are
truncated by both: sft_jax keeps EOS last (and drops, counted, an example whose
prompt alone fills the row); seqio slices (EOS lost). Prints a table and, last,
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from sft_jax.data import packing  # noqa: E402
from sft_jax.data.vocabularies import EOS_ID  # noqa: E402

LENGTHS = (512, 2048)


def make_examples(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Decoder-only {"inputs", "targets"} examples with lognormal lengths (median 150, max 8192)."""
  rng = np.random.default_rng(seed)
  totals = np.clip(np.round(np.exp(rng.normal(np.log(150), 1.0, n))), 8, 8192).astype(np.int64)
  # Responses take 20-80% of an example, at least 2 tokens (one besides EOS).
  prompts = np.clip(np.round(totals * rng.uniform(0.2, 0.8, n)), 1, totals - 2).astype(np.int64)
  tokens = rng.integers(2, 32000, int(totals.sum())).astype(np.int32)  # never 0 (pad) or EOS
  ends = np.cumsum(totals)
  tokens[ends - 1] = EOS_ID
  examples = []
  for end, total, prompt in zip(ends, totals, prompts):
    seq = tokens[end - total:end]
    examples.append({"inputs": seq[:prompt], "targets": seq[prompt:]})
  return examples


def run_sft_jax(examples: list[dict[str, np.ndarray]], length: int, buffer_size: int) -> dict:
  """Packs with the best-fit packer; efficiency, rows, examples/s and over-long counts."""
  start = time.perf_counter()
  packer = packing.BestFitRowPacker(iter(examples), None, length, buffer_size=buffer_size)
  rows = real = 0
  for row in packer:
    rows += 1
    real += int(np.count_nonzero(row["decoder_segment_ids"]))
  seconds = time.perf_counter() - start
  return {"efficiency": real / (rows * length), "rows": rows, "examples_per_s": len(examples) / seconds,
          "seconds": seconds, "packed": len(examples) - packer.counts.dropped,
          "truncated": packer.counts.truncated, "dropped": packer.counts.dropped}


def run_seqio(examples: list[dict[str, np.ndarray]], length: int) -> dict:
  """Packs with seqio's trim_and_pack_dataset (next-fit); same measures."""
  seqs = [np.concatenate([ex["inputs"], ex["targets"]]) for ex in examples]
  ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(seqs), [len(s) for s in seqs])
  dataset = tf.data.Dataset.from_tensor_slices(ragged).map(lambda t: {"targets": t})
  start = time.perf_counter()
  packed = seqio.utils.trim_and_pack_dataset(dataset, {"targets": length})
  rows = real = 0
  for row in packed.as_numpy_iterator():
    rows += 1
    real += int(np.count_nonzero(row["targets_segment_ids"]))
  seconds = time.perf_counter() - start
  return {"efficiency": real / (rows * length), "rows": rows, "examples_per_s": len(examples) / seconds,
          "seconds": seconds, "packed": len(examples), "truncated": sum(len(s) > length for s in seqs),
          "dropped": 0}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_examples", type=int, default=20_000)
  parser.add_argument("--buffer_size", type=int, default=packing.DEFAULT_BUFFER_SIZE)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sweep", default="128,256,512,1024,2048", help="buffer sizes for sft_jax alone; '' skips")
  args = parser.parse_args(argv)

  examples = make_examples(args.num_examples, args.seed)
  totals = np.array([len(ex["inputs"]) + len(ex["targets"]) for ex in examples])
  print(f"{len(examples):,} decoder-only examples (prompt + response), tokens: median {np.median(totals):.0f}, "
        f"mean {totals.mean():.0f}, p90 {np.percentile(totals, 90):.0f}, p99 {np.percentile(totals, 99):.0f}, "
        f"max {totals.max()}; sft_jax buffer {args.buffer_size} examples")
  print("over-long: sft_jax truncates keeping EOS last (drops, counted, an example whose prompt fills the row); "
        "seqio slices (EOS lost)\n")
  print(f"{'length':>6}  {'packer':<18}{'efficiency':>11}{'rows':>8}{'examples/s':>12}{'packed':>9}"
        f"{'truncated':>11}{'dropped':>9}")
  results = {}
  for length in LENGTHS:
    ours, theirs = run_sft_jax(examples, length, args.buffer_size), run_seqio(examples, length)
    results[length] = {"sft_jax": ours, "seqio": theirs}
    for label, r in (("sft_jax best-fit", ours), ("seqio next-fit", theirs)):
      print(f"{length:>6}  {label:<18}{r['efficiency']:>10.2%} {r['rows']:>8,}{r['examples_per_s']:>12,.0f}"
            f"{r['packed']:>9,}{r['truncated']:>11,}{r['dropped']:>9,}")
    print(f"{'':>6}  {'sft_jax / seqio':<18}{ours['efficiency'] / theirs['efficiency']:>10.3f}x"
          f"{ours['rows'] / theirs['rows']:>8.3f}x{ours['examples_per_s'] / theirs['examples_per_s']:>11.2f}x\n")

  # Over both lengths: examples packed per second of packing.
  speed = {name: 2 * len(examples) / sum(results[n][name]["seconds"] for n in LENGTHS)
           for name in ("sft_jax", "seqio")}
  summary = {"benchmark": "packing", "num_examples": len(examples), "buffer_size": args.buffer_size,
             "sft_jax_examples_per_s": speed["sft_jax"], "seqio_examples_per_s": speed["seqio"]}
  for length in LENGTHS:
    for name in ("sft_jax", "seqio"):
      r = results[length][name]
      summary.update({f"{name}_efficiency_{length}": r["efficiency"], f"{name}_rows_{length}": r["rows"],
                      f"{name}_examples_per_s_{length}": r["examples_per_s"],
                      f"{name}_truncated_{length}": r["truncated"], f"{name}_dropped_{length}": r["dropped"]})
    summary[f"efficiency_ratio_{length}"] = (results[length]["sft_jax"]["efficiency"]
                                             / results[length]["seqio"]["efficiency"])
  print(f"examples/s over both lengths: sft_jax {speed['sft_jax']:,.0f}, seqio {speed['seqio']:,.0f}")

  sweep = [int(b) for b in args.sweep.split(",") if b]
  if sweep:
    print("\nsft_jax efficiency by buffer size (examples per buffer)")
    print(f"{'length':>6}  " + "".join(f"{b:>9}" for b in sweep))
    for length in LENGTHS:
      effs = [run_sft_jax(examples, length, b)["efficiency"] for b in sweep]
      summary[f"sft_jax_efficiency_by_buffer_{length}"] = dict(zip(map(str, sweep), effs))
      print(f"{length:>6}  " + "".join(f"{e:>9.2%}" for e in effs))
  print(json.dumps(summary))


if __name__ == "__main__":
  main(sys.argv[1:])

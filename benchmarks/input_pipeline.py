"""Start-up time and CPU cost of the training input (seqio mixture -> best-fit packed batches),
with the synthetic tasks as registered against seqio's default per-task shuffle buffer.

  python benchmarks/input_pipeline.py [--batches=100] [--rounds=2]

Both rows build `pipeline.TrainInput` over the same mixture (default `synthetic_instructions`,
the quickstart's batch shape) in this process and read `--batches` packed batches from it:
  as registered    the synthetic tasks' sources draw their streams in a seeded random order
                   (`synthetic.SeededStreamSource`), so the Tasks carry no shuffle buffer;
  shuffle buffer   the same Tasks given seqio's default buffer (`seqio.SHUFFLE_BUFFER_SIZE`
                   examples per task), which a seqio Task shuffles its stream with unless told not
                   to; seqio has no public setter, so the Tasks' `_shuffle_buffer_size` is set.
"first batch" is the wall and process CPU time from building the input to its first batch
(tf.data graphs, each task's buffer filled); "per batch" is the process CPU per batch after
it (tf.data threads included), over the batches' real examples. The two alternate, the order
flipping every round, after one untimed warm-up build; the table gives medians. ratio = shuffle
buffer / as registered. Prints a table and, last, one JSON line.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402

from sft_jax.data import packing, pipeline  # noqa: E402
from sft_jax.data.collections import synthetic  # noqa: E402

VARIANTS = ("as registered", "shuffle buffer")


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _set_shuffle_buffers(mixture: str, size: int | None) -> None:
  for task in seqio.get_mixture_or_task(mixture).tasks:
    task._shuffle_buffer_size = size  # seqio Tasks expose no setter for it


def _measure(config: pipeline.InputConfig, batches: int) -> dict[str, float]:
  """Times building `config`'s input to its first batch, then CPU per batch over `batches` more."""
  wall, cpu = time.perf_counter(), _cpu_seconds()
  train_input = pipeline.TrainInput(config)
  next(train_input)
  first_wall, first_cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  examples, cpu = 0.0, _cpu_seconds()
  for _ in range(batches):
    examples += packing.batch_counts(next(train_input))["examples"]
  per_batch = (_cpu_seconds() - cpu) / batches
  train_input.close()
  return {"first_batch_wall_s": first_wall, "first_batch_cpu_s": first_cpu, "cpu_ms_per_batch": 1e3 * per_batch,
          "cpu_ms_per_example": 1e3 * per_batch * batches / examples, "examples_per_batch": examples / batches}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", default=synthetic.MIXTURE_NAME)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--input_length", type=int, default=96)
  parser.add_argument("--target_length", type=int, default=16)
  parser.add_argument("--batches", type=int, default=100, help="timed batches per measurement")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args(argv)
  config = pipeline.InputConfig(args.mixture, args.batch_size, args.input_length, args.target_length,
                                autotune=False)
  buffers = {VARIANTS[0]: None, VARIANTS[1]: seqio.SHUFFLE_BUFFER_SIZE}
  _measure(config, 1)  # warm-up: TensorFlow's and the vocabulary's one-time start-up
  runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
  for r in range(args.rounds):
    for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
      _set_shuffle_buffers(args.mixture, buffers[variant])
      runs[variant].append(_measure(config, args.batches))
  _set_shuffle_buffers(args.mixture, None)

  keys = ("first_batch_wall_s", "first_batch_cpu_s", "cpu_ms_per_batch", "cpu_ms_per_example")
  median = {v: {k: statistics.median(run[k] for run in runs[v]) for k in keys} for v in VARIANTS}
  print(f"{args.mixture}: {args.batch_size} rows of {args.input_length} + {args.target_length}, "
        f"{args.batches} batches per measurement, {args.rounds} alternating rounds, "
        f"{runs[VARIANTS[0]][0]['examples_per_batch']:.0f} examples per batch")
  print(f"{'':>16} {'first batch wall s':>19} {'first batch CPU s':>18} {'CPU ms/batch':>13} {'CPU ms/example':>15}")
  for v in VARIANTS:
    m = median[v]
    print(f"{v:>16} {m['first_batch_wall_s']:>19.1f} {m['first_batch_cpu_s']:>18.1f} {m['cpu_ms_per_batch']:>13.1f} "
          f"{m['cpu_ms_per_example']:>15.3f}")
  ratio = {k: median[VARIANTS[1]][k] / median[VARIANTS[0]][k] for k in keys}
  print(f"{'ratio':>16} {ratio['first_batch_wall_s']:>18.2f}x {ratio['first_batch_cpu_s']:>17.2f}x "
        f"{ratio['cpu_ms_per_batch']:>12.2f}x {ratio['cpu_ms_per_example']:>14.2f}x")
  print(json.dumps({"mixture": args.mixture, "batches": args.batches, "rounds": args.rounds,
                    "as_registered": median[VARIANTS[0]], "shuffle_buffer": median[VARIANTS[1]],
                    "ratio": ratio, "runs": runs}))


if __name__ == "__main__":
  main(sys.argv[1:])

"""Tokens/s of a run's jitted train step on real batches: best-fit packed vs unpacked,
and the packing density of best-fit vs seqio's next-fit packer (EncDecFeatureConverter).

  python benchmarks/train_step.py --gin_file=gin_configs/runs/quickstart.gin [--steps=20]

Both rows time the same jitted step on batches of the run's mixture: best-fit
packed rows, and one example per row padded to the same lengths (what a trainer
without packing feeds). "target tokens/s" counts real (non-padding) tokens.
seqio's packer is measured by density only (examples and real tokens per row on the same
stream): at a fixed row shape the step time does not depend on the contents.
Prints a table and, last, one JSON line.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402

from sft_jax import config  # noqa: E402
from sft_jax.data import packing, pipeline  # noqa: E402
from sft_jax.train import optimizers, partitioning  # noqa: E402
from sft_jax.train import state as state_lib  # noqa: E402
from sft_jax.train.step import StepConfig, train_step  # noqa: E402


def _time_steps(step_fn, state, batches, mesh):
  """Seconds per step over `batches` after one warm-up (compile) step."""
  state, metrics = step_fn(state, partitioning.global_batch(batches[0], mesh))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches[1:]:
    state, metrics = step_fn(state, partitioning.global_batch(batch, mesh))
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - start) / (len(batches) - 1)


def _seqio_next_fit_density(name, batch_size, input_length, target_length, num_batches):
  """(examples per batch, real-token fraction) of seqio's EncDecFeatureConverter(pack=True)."""
  lengths = {"inputs": input_length, "targets": target_length}
  dataset = pipeline.get_dataset(name, sequence_length=lengths, split="train", shuffle=True, seed=0,
                                 num_epochs=None)
  packed = seqio.EncDecFeatureConverter(pack=True)(dataset, lengths).batch(batch_size)
  stats = [packing.batch_counts(b) for b in packed.take(num_batches).as_numpy_iterator()]
  return (float(np.mean([s["examples"] for s in stats])),
          float(np.mean([s["tokens"] / s["slots"] for s in stats])))


def main(argv):
  config.setup_logging()
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=20)
  args, rest = parser.parse_known_args(config.parse_gin_flags(
      [a for a in argv if a.startswith("--gin")] + ["--gin.MODEL_DIR='unused'"]) + [
          a for a in argv if not a.startswith("--gin")])
  config.reject_unknown_flags(rest)
  bind = lambda name: config.query_bound_value(f"train.{name}")
  model, batch_size = bind("model"), bind("batch_size")
  input_length, target_length = bind("input_length"), bind("target_length")
  name = config.query_bound_value("%MIXTURE_OR_TASK_NAME")

  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  schedule = optimizers.learning_rate_schedule(total_steps=1000)
  optimizer = optimizers.create_optimizer(schedule)
  graphdef, state = state_lib.init_train_state(model, optimizer, 0, mesh, rules)
  shardings = state_lib.shardings_of(state)
  step_fn = jax.jit(lambda s, b: train_step(StepConfig(graphdef, model, optimizer, schedule), s, b),
                    in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                    out_shardings=(shardings, None), donate_argnums=0)

  packed_input = pipeline.TrainInput(pipeline.InputConfig(name, batch_size, input_length, target_length))
  packed = [next(packed_input) for _ in range(args.steps + 1)]
  stream = pipeline.get_dataset(name, sequence_length=None, split="train", shuffle=True, seed=0,
                                num_epochs=None, trim_output_features=False).as_numpy_iterator()
  unpacked = [packing.pad_unpacked([next(stream) for _ in range(batch_size)], input_length, target_length)
              for _ in range(args.steps + 1)]

  rows = {}
  for label, batches in (("packed (best-fit)", packed), ("unpacked (padded)", unpacked)):
    state, seconds = _time_steps(step_fn, state, batches, mesh)
    real = np.mean([packing.batch_counts(b)["tokens"] for b in batches[1:]])
    examples = np.mean([packing.batch_counts(b)["examples"] for b in batches[1:]])
    rows[label] = {"seconds_per_step": seconds, "real_tokens_per_second": real / seconds,
                   "examples_per_second": examples / seconds,
                   "slots_per_second": batch_size * (input_length + target_length) / seconds}
  print(f"model: {sum(x.size for x in jax.tree.leaves(state.params)):,} params; batch {batch_size} x "
        f"({input_length} + {target_length}); {jax.device_count()} {jax.devices()[0].platform} device(s)")
  print(f"{'batches':<20}{'s/step':>10}{'real tok/s':>14}{'examples/s':>14}{'slots/s':>12}")
  for label, r in rows.items():
    print(f"{label:<20}{r['seconds_per_step']:>10.3f}{r['real_tokens_per_second']:>14.0f}"
          f"{r['examples_per_second']:>14.1f}{r['slots_per_second']:>12.0f}")
  ratio = rows["packed (best-fit)"]["examples_per_second"] / rows["unpacked (padded)"]["examples_per_second"]
  print(f"packed / unpacked examples per second: {ratio:.2f}x")

  ours_examples = float(np.mean([packing.batch_counts(b)["examples"] for b in packed]))
  ours_density = float(np.mean([packing.batch_counts(b)["tokens"] / packing.batch_counts(b)["slots"] for b in packed]))
  seqio_examples, seqio_density = _seqio_next_fit_density(name, batch_size, input_length, target_length, len(packed))
  print(f"\n{'packer':<28}{'examples/batch':>16}{'real-token fraction':>22}")
  print(f"{'sft_jax best-fit':<28}{ours_examples:>16.1f}{ours_density:>22.3f}")
  print(f"{'seqio next-fit (trim_and_pack)':<28}{seqio_examples:>16.1f}{seqio_density:>22.3f}")
  print(f"best-fit / next-fit examples per batch: {ours_examples / seqio_examples:.2f}x")
  print(json.dumps({"benchmark": "train_step", "packed": rows["packed (best-fit)"],
                    "unpacked": rows["unpacked (padded)"], "packed_over_unpacked_examples": ratio,
                    "best_fit_examples_per_batch": ours_examples, "best_fit_token_fraction": ours_density,
                    "seqio_next_fit_examples_per_batch": seqio_examples,
                    "seqio_next_fit_token_fraction": seqio_density,
                    "best_fit_over_next_fit_examples": ours_examples / seqio_examples}))


if __name__ == "__main__":
  main(sys.argv[1:])

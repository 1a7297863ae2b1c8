"""Training throughput of one CPU process split into 1 vs N JAX devices
(`distributed.initialize.cpu_devices`), measured on the real training command.

  python benchmarks/cpu_devices.py --gin_file=gin_configs/runs/quickstart.gin [--steps=150] [--rounds=3]

Each round runs `tools/train.py` once per device count, in a fresh process and a temporary
MODEL_DIR, for `--steps` steps of the run's gin config (extra --gin.* flags pass through);
the order flips every round, since the host's speed drifts. A run's throughput is the mean of
the tokens/s it logged in metrics.jsonl after step `--skip` (compile and warm-up left out).
The runs see the same batches from the same initial parameters, so their last logged losses
must agree up to summation order; the table shows both. ratio = N-device / 1-device median
tokens per second. Prints a table and, last, one JSON line.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from sft_jax.train import metrics

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TRAIN = _ROOT / "tools" / "train.py"


def _train_once(gin_file: str, devices: int, steps: int, skip: int, gin_flags: list[str]) -> dict:
  """Runs tools/train.py with `devices` CPU devices; its mean logged tokens/s, loss and wall time."""
  with tempfile.TemporaryDirectory() as model_dir:
    command = [sys.executable, str(_TRAIN), f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
               f"--gin.TRAIN_STEPS={steps}", f"--gin.train.checkpoint_every={steps + 1}",
               f"--gin.distributed.initialize.cpu_devices={devices}", *gin_flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    if f"'data': {devices}" not in result.stderr + result.stdout:
      raise RuntimeError(f"the run with cpu_devices={devices} did not log a mesh with data={devices}")
    logged = metrics.read_metrics(model_dir)
  speeds = [v for step, v in sorted(logged["tokens_per_second"].items()) if step > skip]
  if not speeds:
    raise ValueError(f"no tokens_per_second logged after step {skip} of {steps}; lower --skip")
  last_step = max(logged["loss"])
  return {"tokens_per_second": statistics.mean(speeds), "loss": logged["loss"][last_step],
          "last_step": last_step, "wall_seconds": wall}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", default="gin_configs/runs/quickstart.gin")
  parser.add_argument("--steps", type=int, default=150, help="train steps per run")
  parser.add_argument("--skip", type=int, default=25, help="logged steps up to this one are left out")
  parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every device count once")
  parser.add_argument("--devices", type=int, default=2, help="the device count compared with 1")
  args, gin_flags = parser.parse_known_args(argv)
  if unknown := [flag for flag in gin_flags if not flag.startswith("--gin.")]:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  counts = [1, args.devices]
  runs: dict[int, list[dict]] = {n: [] for n in counts}
  for r in range(args.rounds):
    for n in counts if r % 2 == 0 else counts[::-1]:
      runs[n].append(_train_once(args.gin_file, n, args.steps, args.skip, gin_flags))
      print(f"round {r + 1}, {n} device(s): {runs[n][-1]['tokens_per_second']:,.0f} tokens/s", flush=True)

  median = {n: statistics.median(run["tokens_per_second"] for run in runs[n]) for n in counts}
  print(f"\n{args.gin_file}, {args.steps} steps per run, tokens/s after step {args.skip}, "
        f"{args.rounds} alternating rounds, {os.cpu_count()} CPU cores")
  print(f"{'CPU devices':>12} {'median tok/s':>13} {'per round':>26} {'last loss':>10} {'wall s':>7}")
  for n in counts:
    per_round = ", ".join(f"{run['tokens_per_second']:,.0f}" for run in runs[n])
    print(f"{n:>12} {median[n]:>13,.0f} {per_round:>26} {runs[n][-1]['loss']:>10.4f} "
          f"{statistics.median(run['wall_seconds'] for run in runs[n]):>7.1f}")
  ratio = median[args.devices] / median[1]
  print(f"{args.devices} / 1 devices tokens per second: {ratio:.2f}x")
  print(json.dumps({"gin_file": args.gin_file, "steps": args.steps, "skip": args.skip, "rounds": args.rounds,
                    "cpu_cores": os.cpu_count(), "ratio": ratio,
                    "runs": {str(n): {"median_tokens_per_second": median[n], "rounds": runs[n]} for n in counts}}))


if __name__ == "__main__":
  main(sys.argv[1:])

"""Evaluates a run's checkpoint(s) on a mixture's held-out split and writes the reports.

  python tools/eval_heldout.py --gin_file=gin_configs/runs/quickstart_eval.gin --gin.CHECKPOINT="'runs/qs'"

Writes report.{json,md,png} and predictions.jsonl to CHECKPOINT/eval (or
evaluate_heldout.out_dir). Flags:
  --all_steps     score every kept checkpoint: eval/step_<N>/ for each, the latest in eval/,
                  and eval/learning_curve.{json,png} (same as evaluate_heldout.all_steps=True)
  --from_metrics  evaluate nothing: draw eval/learning_curve_logged.{json,png} from the
                  periodic-evaluation scalars in CHECKPOINT/metrics.jsonl
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax import config  # noqa: E402
from sft_jax.evaluation import curves, evaluator  # noqa: E402


def main(argv: list[str]) -> None:
  config.setup_logging()
  rest = config.parse_gin_flags(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--all_steps", action="store_true", help="evaluate every kept checkpoint")
  mode.add_argument("--from_metrics", action="store_true", help="draw the curve logged during training")
  args = parser.parse_args(rest)
  if args.from_metrics:
    print(curves.summary_lines(curves.logged_learning_curve()))
    return
  report = evaluator.evaluate_heldout(**({"all_steps": True} if args.all_steps else {}))
  print(evaluator.summary_line(report))


if __name__ == "__main__":
  main(sys.argv[1:])

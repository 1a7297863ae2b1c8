"""Evaluates a checkpoint on a mixture's held-out split and writes report.{json,md,png}.

  python tools/eval_heldout.py --gin_file=gin_configs/runs/quickstart_eval.gin --gin.CHECKPOINT="'runs/qs'"
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax import config  # noqa: E402
from sft_jax.evaluation import evaluator  # noqa: E402


def main(argv: list[str]) -> None:
  config.setup_logging()
  rest = config.parse_gin_flags(argv)
  config.reject_unknown_flags(rest)
  report = evaluator.evaluate_heldout()
  print(evaluator.summary_line(report))


if __name__ == "__main__":
  main(sys.argv[1:])

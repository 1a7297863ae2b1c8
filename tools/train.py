"""Trains a model on a seqio mixture.

  python tools/train.py --gin_file=gin_configs/runs/quickstart.gin --gin.MODEL_DIR="'runs/qs'"
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax import config  # noqa: E402
from sft_jax.train import loop  # noqa: E402


def main(argv: list[str]) -> None:
  config.setup_logging()
  rest = config.parse_gin_flags(argv)
  config.reject_unknown_flags(rest)
  loop.train()


if __name__ == "__main__":
  main(sys.argv[1:])

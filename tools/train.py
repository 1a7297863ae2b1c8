"""Trains a model on a seqio mixture.

  python tools/train.py --gin_file=gin_configs/runs/quickstart.gin --gin.MODEL_DIR="'runs/qs'"

On a multi-host slice or cluster, run the same command on every host: the processes find each
other (TPU VM, SLURM, MPI, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax import config  # noqa: E402
from sft_jax.train import distributed, loop  # noqa: E402


def main(argv: list[str]) -> None:
  config.setup_logging()
  rest = config.parse_gin_flags(argv)
  config.reject_unknown_flags(rest)
  distributed.initialize()
  loop.train()


if __name__ == "__main__":
  main(sys.argv[1:])

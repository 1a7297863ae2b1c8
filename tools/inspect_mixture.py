"""Prints rendered examples of a mixture or task.

  python tools/inspect_mixture.py --mixture=synthetic_instructions --split=train -n 5
"""

import argparse
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax.data import inspection  # noqa: E402


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", required=True, help="seqio mixture or task name")
  parser.add_argument("--split", default="train")
  parser.add_argument("-n", type=int, default=5, help="number of examples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--module", action="append", default=["sft_jax.data.collections.synthetic"],
                      help="module that registers the mixture (repeatable)")
  args = parser.parse_args(argv)
  for module in args.module:
    importlib.import_module(module)
  print(inspection.format_examples(args.mixture, args.split, args.n, args.seed))


if __name__ == "__main__":
  main(sys.argv[1:])

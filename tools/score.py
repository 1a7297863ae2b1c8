"""Writes each line of a JSONL file back with the model's log-likelihood of its targets.

  python tools/score.py --checkpoint=path/to/hf_or_sft_model_dir --inputs=in.jsonl --out=out.jsonl

Lines are {"inputs": str, "targets": str, ...}; each gains "loglik" (sum of the natural-log
probabilities of the target tokens, EOS included) and "num_tokens".
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax import config  # noqa: E402
from sft_jax.evaluation import score_file  # noqa: E402
from sft_jax.train import partitioning  # noqa: E402


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="Hugging Face model directory (has config.json) or sft_jax model directory")
  parser.add_argument("--inputs", required=True, help="JSONL file of {\"inputs\", \"targets\"} lines")
  parser.add_argument("--out", required=True, help="JSONL file to write")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--vocabulary", help="'byte', a SentencePiece .model, a tokenizer.json or a model "
                      "directory (default: the checkpoint's own tokenizer files)")
  parser.add_argument("--step", type=int, help="checkpoint step of an sft_jax model directory (default: latest)")
  parser.add_argument("--max_input_length", type=int, help="fail on longer inputs (tokens; T5 inputs include EOS)")
  parser.add_argument("--max_target_length", type=int, help="fail on longer targets (tokens, EOS included)")
  args = parser.parse_args(argv)
  config.setup_logging()
  summary = score_file.score_file(
      args.checkpoint, args.inputs, args.out, mesh=partitioning.create_mesh(),
      rules=partitioning.logical_axis_rules(), batch_size=args.batch_size, vocabulary=args.vocabulary,
      step=args.step, max_input_length=args.max_input_length, max_target_length=args.max_target_length)
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])

"""Prints what a mixture or task feeds the model: examples, tokens, counts and packing.

  python tools/inspect_mixture.py --mixture=synthetic_instructions --split=train -n 5
  python tools/inspect_mixture.py --file_task=mine=data/alpaca.jsonl:alpaca -n 3
  python tools/inspect_mixture.py --file_task=chat=data/chat.jsonl:messages \
      --chat_template=chatml --tokenizer=path/to/hf_model_dir
  python tools/inspect_mixture.py --mixture=t0_train --mock_data

--mock_data replaces every TFDS dataset by random examples of its features (tfds.testing.mock_data):
a TFDS mixture's templates, tokens, counts and packing can be checked before anything is downloaded.
The text is random letters and every split holds --mock_examples examples.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax.data import inspection  # noqa: E402


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", help="seqio mixture or task name (default: the one --file_task)")
  parser.add_argument("--split", default="train")
  parser.add_argument("-n", type=int, default=5, help="number of examples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--module", action="append", default=["sft_jax.data.collections.synthetic"],
                      help="module that registers the mixture (repeatable; the collections' own modules are "
                           "found from the mixture's name)")
  parser.add_argument("--file_task", action="append", default=[], metavar="NAME=PATH:FMT",
                      help="register a task from local files (a path or glob) in a formats.py format (repeatable)")
  parser.add_argument("--chat_template", help="chat template for --file_task tasks (chatml, llama3, or a path)")
  parser.add_argument("--tokenizer", help="Hugging Face tokenizer.json or model dir for --file_task tasks")
  parser.add_argument("--batch_size", type=int, default=8, help="packed rows per batch")
  parser.add_argument("--input_length", type=int, default=256)
  parser.add_argument("--target_length", type=int, default=64)
  parser.add_argument("--decoder_only", action="store_true",
                      help="pack inputs+targets as one sequence (tasks without inputs always are)")
  parser.add_argument("--num_batches", type=int, default=3, help="packed batches to measure")
  parser.add_argument("--count_limit", type=int, default=1000,
                      help="a split without a declared size that outlasts this many examples is unlimited")
  parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="colour loss-weighted tokens instead of wrapping them in [[...]]")
  parser.add_argument("--mock_data", action="store_true",
                      help="random examples in place of every TFDS dataset (no download); see above")
  parser.add_argument("--mock_examples", type=int, default=inspection.MOCK_EXAMPLES,
                      help="examples per split of each mocked TFDS dataset")
  args = parser.parse_args(argv)
  file_tasks = inspection.register_inputs(args.module, args.file_task, args.chat_template, args.tokenizer,
                                         names=[args.mixture] if args.mixture else [])
  if args.mixture is None and len(file_tasks) != 1:
    parser.error("--mixture is required unless exactly one --file_task is given")
  color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
  with inspection.mock_tfds(args.mock_data, args.mock_examples):
    print(inspection.inspect(
        args.mixture or file_tasks[0], args.split, args.n, seed=args.seed, batch_size=args.batch_size,
        input_length=args.input_length, target_length=args.target_length, num_batches=args.num_batches,
        count_limit=args.count_limit, decoder_only=args.decoder_only, color=color))


if __name__ == "__main__":
  main(sys.argv[1:])

r"""Pairwise LLM-as-a-judge of two evaluation runs' generations, with position swap.

  python tools/judge.py --predictions_a=runs/base/eval/predictions.jsonl \
      --predictions_b=runs/sft/eval/predictions.jsonl --url=http://localhost:8000/v1 \
      --model=judge-model --api_key_env=OPENAI_API_KEY --out_dir=runs/judge

Any OpenAI-compatible chat-completions endpoint works (vLLM, llama.cpp server, OpenAI).
Writes judgments.jsonl and judge_summary.json into --out_dir, prints a per-task table of
wins A / wins B / ties and run B's win rate, then the summary as one JSON line.
"""

import argparse
import json
import os
import sys

from sft_jax import config
from sft_jax.evaluation import judge


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--predictions_a", required=True, help="predictions.jsonl of run A")
  parser.add_argument("--predictions_b", required=True, help="predictions.jsonl of run B")
  parser.add_argument("--url", required=True, help="endpoint base URL, e.g. http://host:8000/v1")
  parser.add_argument("--model", required=True, help="judge model name sent in each request")
  parser.add_argument("--api_key_env", help="environment variable holding the API key (default: no key)")
  parser.add_argument("--out_dir", required=True, help="folder for judgments.jsonl and judge_summary.json")
  parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
  parser.add_argument("--max_pairs", type=int, help="judge at most this many pairs (lowest indices first)")
  parser.add_argument("--include_classification", action="store_true",
                      help="also judge lines with answer_choices (skipped by default)")
  parser.add_argument("--no_reference", action="store_true", help="do not show the reference answer")
  parser.add_argument("--timeout_s", type=float, default=120.0, help="per-request timeout")
  parser.add_argument("--max_retries", type=int, default=5, help="retries on HTTP 429/5xx and network errors")
  parser.add_argument("--max_tokens", type=int, default=1024, help="max tokens of each judge reply")
  args = parser.parse_args(argv)
  config.setup_logging()
  api_key = None
  if args.api_key_env:
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
      parser.error(f"--api_key_env={args.api_key_env}: that environment variable is not set")
  client = judge.JudgeClient(url=args.url, model=args.model, api_key=api_key, timeout_s=args.timeout_s,
                             max_retries=args.max_retries, max_tokens=args.max_tokens)
  summary = judge.judge_runs(args.predictions_a, args.predictions_b, args.out_dir, client,
                             concurrency=args.concurrency, max_pairs=args.max_pairs,
                             include_classification=args.include_classification,
                             use_reference=not args.no_reference)
  print(judge.format_summary_table(summary))
  print(json.dumps(summary, sort_keys=True))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])

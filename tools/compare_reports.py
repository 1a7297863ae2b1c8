"""Compares two evaluation reports: per-task, per-cluster and mean deltas (B - A).

  python tools/compare_reports.py runs/a/eval/report.json runs/b/eval/report.json [--markdown OUT.md]
"""

import argparse
import sys

from sft_jax.evaluation import compare


def main(argv: list[str]) -> str:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("a", help="report.json of the reference run (A)")
  parser.add_argument("b", help="report.json of the run compared with it (B)")
  parser.add_argument("--markdown", metavar="OUT.md", help="also write the tables as Markdown")
  args = parser.parse_args(argv)
  try:
    comparison = compare.compare_reports(compare.load_report(args.a), compare.load_report(args.b))
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  text = compare.render_text(comparison, args.a, args.b)
  print(text, end="")
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(compare.render_markdown(comparison, args.a, args.b))
  return text


if __name__ == "__main__":
  main(sys.argv[1:])

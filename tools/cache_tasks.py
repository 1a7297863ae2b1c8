"""Caches seqio tasks offline with Apache Beam (seqio's cache pipeline), for training to read back.

  python tools/cache_tasks.py --module_import=sft_jax.data.collections.t0 --mixture=t0_train \\
      --output_cache_dir=/data/seqio_cache
  python tools/cache_tasks.py --module_import=my_project.tasks --tasks='my_task_.*' \\
      --output_cache_dir=gs://BUCKET/seqio_cache --runner=DataflowRunner --project=PROJECT \\
      --region=us-central1 --temp_location=gs://BUCKET/tmp --requirements_file=requirements.txt

Every flag this tool does not define is a Beam pipeline option (default --runner=DirectRunner;
FlinkRunner, SparkRunner and DataflowRunner take their own flags). Train from the cache with the
gin binding `cached_task_dirs.dirs = ['<output_cache_dir>']`. Tasks must include a
seqio.CacheDatasetPlaceholder() and have finite splits (see sft_jax/data/caching.py).
Needs Apache Beam: pip install -e '.[beam]'.
"""

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from sft_jax.data import caching  # noqa: E402


def _names(values: list[str]) -> list[str]:
  return [name for value in values for name in value.split(",") if name]


def main(argv: list[str]) -> None:
  # No abbreviations: a Beam option must never be taken for a prefix of one of these flags.
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  parser.add_argument("--output_cache_dir", required=True, help="where the cached tasks are written")
  parser.add_argument("--tasks", action="append", default=[],
                      help="task names or regexes (full match), comma-separated or repeated")
  parser.add_argument("--mixture", action="append", default=[], help="cache every task of this mixture (repeatable)")
  parser.add_argument("--module_import", action="append", default=[],
                      help="module that registers the tasks, imported here and on every Beam worker (repeatable)")
  parser.add_argument("--splits", default="", help="comma-separated splits to cache (default: all of each task)")
  parser.add_argument("--min_shards", type=int, default=caching.DEFAULT_MIN_SHARDS,
                      help="output files per split, at least")
  parser.add_argument("--max_shards", type=int, default=0, help="output files per split, at most (0: no limit)")
  parser.add_argument("--overwrite", action="store_true", help="cache again tasks that are already cached")
  parser.add_argument("--base_seed", type=int, default=None, help="seed of random preprocessors (per task)")
  args, pipeline_options = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  written = caching.cache_tasks(
      args.output_cache_dir, tasks=_names(args.tasks), mixture_names=args.mixture, module_imports=args.module_import,
      pipeline_options=pipeline_options or caching.DEFAULT_PIPELINE_OPTIONS,
      splits=_names([args.splits]) or None, min_shards=args.min_shards, max_shards=args.max_shards,
      overwrite=args.overwrite, base_seed=args.base_seed)
  print("\n".join(written) if written else "nothing to cache: every task is cached already")


if __name__ == "__main__":
  main(sys.argv[1:])

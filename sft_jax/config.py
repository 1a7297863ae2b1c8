"""gin plumbing shared by the tools: flags in, bindings parsed, mixture modules imported.

Flags follow t5x: `--gin_file=F` (repeatable), `--gin.NAME=VALUE` (one binding,
e.g. `--gin.MODEL_DIR="'runs/qs'"`), `--gin_search_paths=a,b`. A run file names
the modules that register its mixtures in the macro MIXTURE_MODULES; they are
imported after parsing, before anything looks a mixture up.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Sequence

import gin

# The repository's gin_configs/, so `include 'models/t5_tiny.gin'` works from any directory.
DEFAULT_SEARCH_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


def _guard_package_path_reader() -> None:
  """Makes gin's package-resource include lookup treat namespace packages as "not found".

  gin also looks for `include 'runs/train.gin'` as a file in a Python package named `runs`.
  When the working directory is on sys.path and holds a `runs/` output folder (the default
  MODEL_DIR parent), `runs` imports as a namespace package without a file, and gin's lookup
  raises TypeError instead of moving on to the search paths.
  """
  readers = gin.config._FILE_READERS  # gin has no public API to replace a registered reader

  def guarded(check):
    def exists(path: str) -> bool:
      try:
        return check(path)
      except TypeError:
        return False
    exists.guarded = True
    return exists

  for i, (reader, check) in enumerate(readers):
    if not getattr(check, "guarded", False):
      readers[i] = (reader, guarded(check))


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """Splits argv into (gin files, gin bindings, search paths, other args)."""
  files, bindings, paths, rest = [], [], [], []
  for arg in argv:
    if arg.startswith("--gin_file="):
      files.append(arg.split("=", 1)[1])
    elif arg.startswith("--gin_search_paths="):
      paths.extend(p for p in arg.split("=", 1)[1].split(",") if p)
    elif arg.startswith("--gin."):
      name, _, value = arg[len("--gin."):].partition("=")
      if not value:
        raise ValueError(f"gin flag {arg!r} has no value; write --gin.NAME=VALUE")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return files, bindings, paths, rest


def import_mixture_modules() -> None:
  """Imports the modules listed in the MIXTURE_MODULES macro (they register tasks)."""
  try:
    modules = gin.query_parameter("%MIXTURE_MODULES")
  except ValueError:
    modules = ()
  for module in modules or ():
    importlib.import_module(module)


def parse_gin_flags(argv: Sequence[str]) -> list[str]:
  """Parses the gin flags of `argv`, imports mixture modules, returns the other args."""
  files, bindings, paths, rest = split_gin_args(argv)
  if not files:
    raise ValueError("no --gin_file given")
  _guard_package_path_reader()
  for path in paths + [DEFAULT_SEARCH_PATH, os.getcwd()]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  import_mixture_modules()
  gin.finalize()
  return rest


def reject_unknown_flags(rest: Sequence[str]) -> None:
  """Exits with a clear message when flags other than gin's were given."""
  if rest:
    raise SystemExit(f"unknown arguments: {' '.join(rest)} (use --gin_file=..., --gin.NAME=VALUE)")


def setup_logging() -> None:
  """INFO logs from sft_jax to stderr, quieter third-party libraries."""
  # force: importing TensorFlow or seqio may already have put a WARNING-level handler on the root.
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  for noisy in ("absl", "jax", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  logging.getLogger().addFilter(_GinProbeFilter())


class _GinProbeFilter(logging.Filter):
  """gin logs "Path not found" at ERROR while probing Python packages for an include
  that a search path then finds (a missing file still fails the parse loudly), and one
  INFO line per include file it looks up."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(("Path not found", "system_path_file_exists"))


def query_bound_value(selector: str):
  """The value gin would pass for `selector` (e.g. "train.model"), references evaluated."""
  value = gin.query_parameter(selector)
  while isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  return value

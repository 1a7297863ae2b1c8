"""Offline caching of seqio tasks with Apache Beam: preprocess once, then train from the cache.

`cache_tasks` runs seqio's cache pipeline (`seqio.scripts.cache_tasks_main.run_pipeline`, built here
from the same `seqio.beam_utils` transforms without that script's absl flags): every split of a task
is read shard by shard and preprocessed up to the task's `seqio.CacheDatasetPlaceholder()`, shuffled
globally, and written under `<output_cache_dir>/<task>/` as TFRecord files of tf.Examples with the
split's info and statistics (examples and tokens); a `COMPLETED` file marks a finished task.

A task can be cached when its preprocessors include `seqio.CacheDatasetPlaceholder()` (the T0 tasks
have one after tokenizing), its source permits caching and every split is finite: a TFDS, file or
TFRecord source, or a FunctionDataSource over a finite generator. The synthetic tasks stream
unlimited training examples and have no placeholder; local file tasks (collections/files.py) read
their files in Python at first use and do not permit caching.

Beam runs where its pipeline options say: `--runner=DirectRunner` on this machine (Beam 2.77 first
fetches its Prism runner binary and falls back to the in-process FnApiRunner without network), and at
scale e.g. `--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
--requirements_file=requirements.txt`, `--runner=FlinkRunner --flink_master=HOST:PORT` or
`--runner=SparkRunner --spark_master_url=spark://HOST:PORT`, writing to a shared file system
(gs://...). Remote workers find the tasks by importing `module_imports`, so a task must be registered
by importing a module, with the same vocabulary as in training (a gin-chosen vocabulary: register
from a module that sets it). TFDS datasets are best prepared first, so that their shards are read in
parallel.

Training reads every task cached in the directories bound to `cached_task_dirs.dirs` (gin, in
sft_jax.data.pipeline) from the cache; `seqio.mixing_rate_num_examples` then counts a cached task's
examples from its statistics.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
from typing import Sequence

import seqio
import tensorflow as tf

from sft_jax.data import mixtures

DEFAULT_PIPELINE_OPTIONS = ("--runner=DirectRunner",)
# seqio's default: more output shards than readers lets each reader shuffle across files.
DEFAULT_MIN_SHARDS = 64


def _import_beam():
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    from seqio import beam_utils  # pylint: disable=g-import-not-at-top  (imports apache_beam)
  except ImportError as e:
    raise ImportError("offline caching needs Apache Beam: pip install -e '.[beam]'") from e
  return beam, beam_utils


def select_tasks(tasks: Sequence[str] = (), mixture_names: Sequence[str] = ()) -> list[str]:
  """Registered tasks whose names fully match a regex of `tasks`, then the tasks of `mixture_names`."""
  registered = sorted(seqio.TaskRegistry.names())
  selected = []
  for pattern in tasks:
    matches = [name for name in registered if re.fullmatch(pattern, name)]
    if not matches:
      raise ValueError(f"no registered task matches {pattern!r}")
    selected += matches
  for name in mixture_names:
    if name not in seqio.MixtureRegistry.names():
      raise ValueError(f"no mixture registered as {name!r}")
    selected += mixtures.training_task_names(name)
  if not selected:
    raise ValueError("no tasks given: name tasks (regexes) or mixtures")
  return list(dict.fromkeys(selected))


def check_cacheable(task_names: Sequence[str]) -> None:
  """Raises for tasks that cannot be cached, naming them and why."""
  unsupported = [name for name in task_names if not seqio.get_mixture_or_task(name).supports_caching]
  if unsupported:
    raise ValueError(f"tasks {unsupported} cannot be cached: their preprocessors have no "
                     "seqio.CacheDatasetPlaceholder() (see sft_jax.data.caching)")


def _preprocessors_seed(task_name: str, base_seed: int | None) -> int | None:
  # seqio's rule: a task's seed is an MD5 of its name plus the base seed.
  if base_seed is None:
    return None
  return int.from_bytes(hashlib.md5(task_name.encode()).digest(), "little") + base_seed


def _add_task(pipeline, beam, beam_utils, task: seqio.Task, output_dir: str, splits: Sequence[str],
              module_imports: Sequence[str], min_shards: int, max_shards: int, base_seed: int | None) -> None:
  """Adds the transforms that cache `task`'s `splits` into `output_dir`, then its COMPLETED file."""
  written = []
  for split in splits:
    label = f"{task.name}_{split}"
    examples_in = beam_utils.PreprocessTask(task, split, modules_to_import=list(module_imports),
                                            preprocessors_seed=_preprocessors_seed(task.name, base_seed))
    num_shards = max(len(examples_in.shards), min_shards)
    if max_shards > 0:
      num_shards = min(num_shards, max_shards)
    examples = (pipeline
                | f"{label}_pat" >> examples_in
                # Shuffles examples across input shards: the files are read back in parallel.
                | f"{label}_global_example_shuffle" >> beam.Reshuffle())
    written.append(examples | f"{label}_write_tfrecord" >> beam_utils.WriteExampleTfRecord(
        seqio.get_cached_tfrecord_prefix(output_dir, split), num_shards=num_shards))
    written.append(examples
                   | f"{label}_info" >> beam_utils.GetInfo(num_shards)
                   | f"{label}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(output_dir, split)))
    written.append(examples
                   | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                   | f"{label}_write_stats" >> beam_utils.WriteJson(seqio.get_cached_stats_path(output_dir, split)))
  # COMPLETED is written once every file of every split is: a reader never sees half a cache.
  _ = (written
       | f"{task.name}_flatten_completion_values" >> beam.Flatten()
       | f"{task.name}_discard_completion_values" >> beam.Filter(lambda _: False)
       | f"{task.name}_write_completed_file" >> beam.io.textio.WriteToText(
           os.path.join(output_dir, "COMPLETED"), append_trailing_newlines=False, num_shards=1,
           shard_name_template=""))


def cache_tasks(output_cache_dir: str, *, tasks: Sequence[str] = (), mixture_names: Sequence[str] = (),
                module_imports: Sequence[str] = (), pipeline_options: Sequence[str] = DEFAULT_PIPELINE_OPTIONS,
                splits: Sequence[str] | None = None, min_shards: int = DEFAULT_MIN_SHARDS, max_shards: int = 0,
                overwrite: bool = False, base_seed: int | None = None) -> list[str]:
  """Caches tasks into `output_cache_dir` in one Beam pipeline; returns the task directories written.

  The tasks are those `select_tasks(tasks, mixture_names)` names once `module_imports` are
  imported (here and on every Beam worker). `pipeline_options` are Beam's command-line options
  (runner and its settings); `splits` limits the splits cached (default: every split of each
  task). A task already cached in `output_cache_dir` or another seqio cache directory is
  skipped unless `overwrite`, which rewrites its copy in `output_cache_dir`. `base_seed` seeds
  random preprocessors, per task.
  """
  beam, beam_utils = _import_beam()
  for module in module_imports:
    importlib.import_module(module)
  task_names = select_tasks(tasks, mixture_names)
  check_cacheable(task_names)
  seqio.add_global_cache_dirs([output_cache_dir])
  todo = []
  for name in task_names:
    task = seqio.get_mixture_or_task(name)
    output_dir = os.path.join(output_cache_dir, seqio.get_task_dir_from_name(name))
    if task.cache_dir and not overwrite:
      logging.info("task %s is already cached in %s; skipped (overwrite=True rewrites it)", name, task.cache_dir)
      continue
    task_splits = list(task.splits if splits is None else [s for s in splits if s in task.splits])
    if not task_splits:
      raise ValueError(f"task {name!r} has none of the splits {list(splits or [])}; its splits: {list(task.splits)}")
    if tf.io.gfile.exists(output_dir):
      tf.io.gfile.rmtree(output_dir)  # an unfinished or overwritten cache
    todo.append((task, output_dir, task_splits))
  if not todo:
    return []
  tf.io.gfile.makedirs(output_cache_dir)
  options = beam.options.pipeline_options.PipelineOptions(list(pipeline_options))
  with beam.Pipeline(options=options) as pipeline:
    for task, output_dir, task_splits in todo:
      logging.info("caching task %s, splits %s, into %s", task.name, task_splits, output_dir)
      _add_task(pipeline, beam, beam_utils, task, output_dir, task_splits, module_imports, min_shards, max_shards,
                base_seed)
  return [output_dir for _, output_dir, _ in todo]

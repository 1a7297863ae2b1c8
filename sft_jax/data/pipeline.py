"""The training input: a seqio mixture read per host, packed into numpy batches.

The mixture is read as `data_shards` shards (seqio.ShardInfo), each packed into its own
equal block of rows of the global batch; each process reads the shards of its rows
(shards i*k ... i*k+k-1 for process i of n, k = data_shards / n). The default, one shard
per process, is the usual multi-host layout; fixing `data_shards` makes the global batch
independent of the number of processes, so a run can move between topologies (2 hosts
to 1) and still read exactly the same batches.

Rows follow the model's `feature_layout`: "encoder_decoder" rows have `input_length`
encoder and `target_length` decoder slots; "decoder_only" rows concatenate prompt and
targets into `input_length + target_length` slots (seqio's DecoderFeatureConverter
lengths), an over-long prompt keeping at least its last `input_length` tokens;
"preference_pairs" rows (DPO) hold one unpacked (prompt, chosen, rejected) each, for either
model family (sft_jax/data/preference.py).

The position in the stream is the number of batches emitted; since the stream and the
packer are deterministic given the seed, restoring a position replays the stream to
exactly the batch the interrupted run would have produced next.

Tasks cached offline (tools/cache_tasks.py) are read from their cache when it is found in a
seqio cache directory, e.g. one bound in gin: `cached_task_dirs.dirs = ['gs://bucket/cache']`.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterator, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from sft_jax.data import packing, preference


@gin.configurable
def cached_task_dirs(dirs: Sequence[str] = ()) -> tuple[str, ...]:
  """Directories searched for offline-cached tasks (written by tools/cache_tasks.py); none by default."""
  return tuple(dirs)


def use_cached(mixture_or_task_name: str) -> bool:
  """True when the tasks are cached: a cached task is read from its cache, never preprocessed again.

  A mixture is read from the cache as a whole, so when some of its cacheable tasks are cached
  every one must be (tasks that cannot be cached are preprocessed as they are read).
  """
  seqio.add_global_cache_dirs(list(cached_task_dirs()))
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  cacheable = [task for task in tasks if task.supports_caching]
  cached = [task.name for task in cacheable if task.cache_dir]
  missing = [task.name for task in cacheable if not task.cache_dir]
  if cached and missing:
    raise ValueError(f"{mixture_or_task_name}: tasks {cached} are cached but {missing} are not; cache "
                     "them too (tools/cache_tasks.py) or remove the cache directory")
  return bool(cached)


def get_dataset(mixture_or_task_name: str, **kwargs) -> tf.data.Dataset:
  """seqio's get_dataset for a task or a mixture, keeping `*_pretokenized` for both, from the cache when cached."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    kwargs.setdefault("copy_pretokenized", True)
  kwargs.setdefault("use_cached", use_cached(mixture_or_task_name))
  return provider.get_dataset(**kwargs)


def iterate_numpy(dataset: tf.data.Dataset, features: Sequence[str], chunk_size: int = 256
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Yields each example's variable-length `features` as numpy arrays, in dataset order.

  Examples cross from TF to numpy in padded chunks: one eager conversion per example costs
  about a millisecond of Python overhead, most of a small model's input pipeline.
  """
  def keep_with_lengths(example):
    kept = {name: example[name] for name in features}
    kept.update({f"{name}@length": tf.shape(example[name])[0] for name in features})
    return kept

  chunks = dataset.map(keep_with_lengths).padded_batch(chunk_size)
  for chunk in chunks.as_numpy_iterator():
    for i in range(len(chunk[f"{features[0]}@length"])):
      yield {name: chunk[name][i, :chunk[f"{name}@length"][i]] for name in features}


def check_vocab_fits(mixture_or_task_name: str, model_vocab_size: int) -> None:
  """Raises when a task's token ids would not fit the model's embedding table.

  An out-of-range id is not an error inside jit (gathers clamp), so a model built for a
  smaller vocabulary would otherwise train on silently corrupted inputs.
  """
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  for name, feature in provider.output_features.items():
    size = getattr(feature.vocabulary, "vocab_size", 0)
    if feature.dtype == tf.int32 and size > model_vocab_size:
      raise ValueError(f"{mixture_or_task_name}: feature {name!r} uses a {size}-token vocabulary but the "
                       f"model's vocab_size is {model_vocab_size}; set the model's vocab_size >= {size}")


FEATURE_LAYOUTS = ("encoder_decoder", "decoder_only", "preference_pairs")


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """What the trainer reads: a mixture or task, its split, packed shapes and the seed."""

  mixture_or_task_name: str
  batch_size: int  # global rows per step, across all processes
  input_length: int
  target_length: int
  split: str = "train"
  seed: int = 0
  # tf.data autotuning runs a tuning thread and widens parallel maps; where the same few
  # cores also run the train step (a CPU host) that costs more than it saves.
  autotune: bool = True
  # Shards the mixture is read in (0: one per process); see the module docstring.
  data_shards: int = 0
  feature_layout: str = "encoder_decoder"  # or "decoder_only"; see the module docstring
  # Decoder-only rows' start token, as the packer takes it (packing.packer_bos_id of the model's
  # bos_id): None is seqio's 0, packing.NO_BOS none, another id a BOS prefixed to each example.
  bos_id: int | None = None

  def __post_init__(self):
    if self.feature_layout not in FEATURE_LAYOUTS:
      raise ValueError(f"feature_layout={self.feature_layout!r}; expected one of {FEATURE_LAYOUTS}")
    if self.bos_id is not None and self.feature_layout != "decoder_only":
      raise ValueError(f"bos_id={self.bos_id} applies to feature_layout='decoder_only' only")


class _Prefetcher:
  """Runs an iterator in a daemon thread, up to `depth` items ahead of its reader.

  The producer (tf.data, the Python packer) overlaps with the jitted step, whose
  dispatch returns at once and which releases the GIL while it runs.
  """

  _DONE = object()

  def __init__(self, make_iterator: Callable[[], Iterator], depth: int):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(make_iterator,), daemon=True,
                                    name="sft_jax-input")
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self, make_iterator: Callable[[], Iterator]) -> None:
    try:
      for item in make_iterator():
        if not self._put(item):
          return
      self._put(self._DONE)
    except BaseException as e:  # handed to the reader, raised there
      self._put(e)

  def __next__(self):
    item = self._queue.get()
    if item is self._DONE:
      self._queue.put(item)  # later calls stop too
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


class TrainInput:
  """An iterator of packed host-local batches with a resumable position.

  With `prefetch` > 0 the batches are produced that many ahead in a background thread;
  the position saved in checkpoints counts the batches handed out, not those produced.
  """

  def __init__(self, config: InputConfig, process_index: int = 0, process_count: int = 1,
               prefetch: int = 0, state: Mapping | None = None):
    self.data_shards = config.data_shards or process_count
    if self.data_shards % process_count:
      raise ValueError(f"data_shards={self.data_shards} is not divisible by the process count {process_count}")
    if config.batch_size % self.data_shards:
      raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.data_shards} data shards "
                       f"(one per process unless data_shards is set)")
    self.config = config
    self.local_batch_size = config.batch_size // process_count
    shards_per_process = self.data_shards // process_count
    self._shards = [seqio.ShardInfo(index=process_index * shards_per_process + i, num_shards=self.data_shards)
                    for i in range(shards_per_process)]
    self._prefetch = prefetch
    self._source = None
    self._start(self._checked_position(state) if state else 0)

  def _new_packer(self, shard_info: seqio.ShardInfo) -> packing.BestFitPacker | preference.PairBatcher:
    c = self.config
    rows = c.batch_size // self.data_shards
    dataset = get_dataset(
        c.mixture_or_task_name,
        sequence_length=None,  # the packer truncates and counts truncations
        split=c.split,
        shuffle=True,
        seed=c.seed,
        shard_info=shard_info,
        num_epochs=None,
        trim_output_features=False,
    )
    options = tf.data.Options()
    options.autotune.enabled = c.autotune
    if c.feature_layout == "preference_pairs":  # one (prompt, chosen, rejected) per row, for DPO
      return preference.PairBatcher(iterate_numpy(dataset.with_options(options), preference.TEXT_FEATURES),
                                    rows, c.input_length, c.target_length)
    examples = iterate_numpy(dataset.with_options(options), ("inputs", "targets"))
    # The packer reads a whole buffer before its first row; 16 examples per row of
    # the batch spans a few batches (enough choice for dense rows) without making
    # the first step wait on thousands of examples from a slow Python source.
    buffer_size = min(packing.DEFAULT_BUFFER_SIZE, 16 * rows)
    if c.feature_layout == "decoder_only":
      return packing.BestFitPacker(examples, rows, None, c.input_length + c.target_length,
                                   prompt_length=c.input_length, buffer_size=buffer_size, shuffle_seed=c.seed,
                                   bos_id=c.bos_id)
    return packing.BestFitPacker(examples, rows, c.input_length, c.target_length,
                                 buffer_size=buffer_size, shuffle_seed=c.seed)

  def _start(self, position: int) -> None:
    """(Re)starts the stream at `position` batches by replaying the deterministic stream."""
    self.close()
    self._packers = [self._new_packer(shard) for shard in self._shards]
    self._position = position

    def next_batch() -> dict[str, np.ndarray]:
      blocks = [next(packer) for packer in self._packers]
      return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]} if len(blocks) > 1 else blocks[0]

    def batches() -> Iterator[Mapping[str, np.ndarray]]:
      for _ in range(position):
        next_batch()
      while True:
        try:
          yield next_batch()
        except StopIteration:
          return

    self._source = _Prefetcher(batches, self._prefetch) if self._prefetch else batches()

  @property
  def counts(self) -> packing.PackingCounts:
    """Truncated/dropped counts of this process's packers (prefetched batches included)."""
    counts = [packer.counts for packer in self._packers]
    return packing.PackingCounts(**{f.name: sum(getattr(c, f.name) for c in counts)
                                    for f in dataclasses.fields(packing.PackingCounts)})

  def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
    return self

  def __next__(self) -> Mapping[str, np.ndarray]:
    batch = next(self._source)
    self._position += 1
    return batch

  def get_state(self) -> dict:
    """The position to store in a checkpoint."""
    return {"batches_emitted": self._position, "seed": self.config.seed,
            "mixture_or_task_name": self.config.mixture_or_task_name, "data_shards": self.data_shards}

  def _checked_position(self, state: Mapping) -> int:
    expected = (self.config.mixture_or_task_name, self.config.seed, self.data_shards)
    # States written before data shards were recorded were read with one shard per process.
    stored = (state["mixture_or_task_name"], state["seed"], state.get("data_shards", self.data_shards))
    if stored != expected:
      hint = (f"; set train.data_shards={stored[2]} to read the same batches on this topology"
              if stored[:2] == expected[:2] else "")
      raise ValueError(f"checkpoint data state {dict(state)} does not match the configured input "
                       f"({self.config.mixture_or_task_name!r}, seed {self.config.seed}, "
                       f"data_shards {self.data_shards}){hint}")
    return int(state["batches_emitted"])

  def set_state(self, state: Mapping) -> None:
    """Moves to a stored position by replaying the deterministic stream up to it."""
    self._start(self._checked_position(state))

  def close(self) -> None:
    """Stops the prefetch thread, if any."""
    if isinstance(self._source, _Prefetcher):
      self._source.close()
    self._source = None

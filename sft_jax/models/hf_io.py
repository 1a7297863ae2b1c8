"""Hugging Face checkpoints in and out: safetensors <-> sharded sft_jax parameters, any architecture.

Import reads a local model directory (config.json plus model.safetensors, or the sharded
model.safetensors.index.json and its shards) of `T5ForConditionalGeneration` (T5 v1.0, v1.1,
Flan-T5; `hf_t5`) or `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` (`hf_llama`),
chosen by config.json's `architectures`. The network is first built abstractly
(`nnx.eval_shape`: shapes and shardings, no weights); then each parameter is created with
`jax.make_array_from_callback`, whose callback reads from a memory map of the file just the slice
one device holds, transposed to sft_jax's layout (`hf_tensors.TensorMap`). No random
initialization runs and no whole-model host copy is made. Export writes with
`safetensors.numpy`, one shard at a time.

An sft_jax model directory written by `convert_to_checkpoint` holds `config.gin` (the model
bindings), `checkpoints/<step>/` (the orbax layout of `sft_jax.train.checkpoints.Checkpointer`:
items `params` and `data`), and `hf/` (the source config.json and tokenizer files).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import re
import shutil
from types import ModuleType
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy
import seqio

from sft_jax.data import vocabularies
from sft_jax.models import decoder
from sft_jax.models import hf_llama
from sft_jax.models import hf_t5
from sft_jax.models import t5
from sft_jax.models.hf_tensors import INDEX_FILE, SINGLE_FILE, SafetensorsDir  # noqa: F401 (public names)
from sft_jax.models.hf_tensors import plan_shards, state_path

_ARCHITECTURE_MODULES = (hf_t5, hf_llama)
SUPPORTED_ARCHITECTURES = tuple(a for m in _ARCHITECTURE_MODULES for a in m.ARCHITECTURES)
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GIN_FILE = "config.gin"
ASSETS_DIR = "hf"
# Kept for callers of the T5-only API.
hf_config_from_t5 = hf_t5.hf_config
t5_config_from_hf = hf_t5.t5_config_from_hf
t5_tensor_maps = hf_t5.tensor_maps


@dataclasses.dataclass
class LoadedModel:
  """A network ready to run: its model interface, graph, sharded params and vocabulary."""
  model: Any  # t5.EncoderDecoderModel or decoder.DecoderOnlyModel
  graphdef: Any
  params: Any
  vocabulary: seqio.Vocabulary | None
  hf_config: dict | None = None  # the source config.json, carried to an export
  assets_dir: str | None = None  # where config.json and tokenizer files were found


def read_hf_config(hf_dir: str) -> dict:
  """The parsed config.json of a Hugging Face model directory."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
  with open(path) as f:
    return json.load(f)


def architecture_module(hf: Mapping[str, Any], path: str = "config.json") -> ModuleType:
  """The module (hf_t5 or hf_llama) that reads a config.json, by `architectures` or `model_type`."""
  architectures = hf.get("architectures") or []
  for module in _ARCHITECTURE_MODULES:
    if (architectures[0] in module.ARCHITECTURES if architectures else hf.get("model_type") in module.MODEL_TYPES):
      return module
  raise ValueError(f"{path}: architecture {architectures or hf.get('model_type')!r} is not supported; "
                   f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


def _module_of_config(config: Any) -> ModuleType:
  if isinstance(config, t5.T5Config):
    return hf_t5
  if isinstance(config, decoder.DecoderConfig):
    return hf_llama
  raise TypeError(f"no Hugging Face architecture for a {type(config).__name__}")


def abstract_model(model: Any, mesh: jax.sharding.Mesh,
                   rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any]:
  """(graphdef, abstract params whose leaves carry their NamedShardings on `mesh`), allocating nothing."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    module = nnx.eval_shape(lambda: model.init(0))
  graphdef, params = nnx.split(module, nnx.Param)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
      mesh, x.sharding.spec)), params)
  return graphdef, params


# ---- import ---------------------------------------------------------------------------------

def _resolve_names(files: SafetensorsDir, maps: list, arch: ModuleType, config: Any) -> dict[str, str]:
  """HF name wanted -> name in the files; checks presence, shapes and leftovers."""
  resolved = {}
  for m in maps:
    found = arch.resolve_name(files, m.hf_name)
    if found is None:
      raise KeyError(f"{files.hf_dir}: tensor {m.hf_name} is missing (needed for {'.'.join(map(str, m.path))})")
    if files.shape(found) != m.hf_shape:
      raise ValueError(f"{files.file_of(found)}: tensor {found} has shape {files.shape(found)}, the config "
                       f"implies {m.hf_shape}")
    resolved[m.hf_name] = found
  used = set(resolved.values())
  unexpected = [n for n in files.names() if n not in used and not arch.is_ignored(n, config)]
  if unexpected:
    raise ValueError(f"{files.hf_dir}: {len(unexpected)} tensors have no place in the sft_jax "
                     f"{type(config).__name__} network (e.g. {files.file_of(unexpected[0])}: "
                     f"{', '.join(unexpected[:5])})")
  return resolved


def import_hf(hf_dir: str, *, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
              param_dtype: str = "float32", **config_overrides: Any) -> LoadedModel:
  """Loads a Hugging Face directory into parameters sharded on `mesh` by the logical `rules`.

  Parameters are cast to `param_dtype` whatever the stored dtype; `config_overrides` set other
  config fields (dtype, attention_impl, dropout_rate ...).
  """
  hf_config = read_hf_config(hf_dir)
  path = os.path.join(hf_dir, "config.json")
  arch = architecture_module(hf_config, path)
  files = SafetensorsDir(hf_dir)
  model = arch.model_from_hf(hf_config, files, path=path, param_dtype=param_dtype, **config_overrides)
  graphdef, abstract = abstract_model(model, mesh, rules)
  maps = {m.path: m for m in arch.tensor_maps(model.config)}
  resolved = _resolve_names(files, list(maps.values()), arch, model.config)

  def load(key_path, leaf):
    m = maps[state_path(key_path)]
    view = files.view(resolved[m.hf_name])
    return jax.make_array_from_callback(
        leaf.shape, leaf.sharding, lambda index: m.to_sft(view, index).astype(leaf.dtype))

  params = jax.tree_util.tree_map_with_path(load, abstract)
  logging.info("imported %d tensors from %s", len(maps), hf_dir)
  return LoadedModel(model, graphdef, params, load_vocabulary(hf_dir), hf_config, hf_dir)


# ---- export ---------------------------------------------------------------------------------

def _to_host(x: jax.Array) -> np.ndarray:
  """A whole parameter on this host (gathered from the other processes when it is spread out)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_hf(out_dir: str, config: Any, params: Any, *, base_config: Mapping[str, Any] | None = None,
            assets_dir: str | None = None, dtype: str | None = None,
            max_shard_bytes: int = 5 << 30) -> list[str]:
  """Writes `params` of a T5Config or DecoderConfig network as a transformers directory.

  Returns the safetensors files written. One tensor at a time is gathered to the host and shard
  files are written as they fill, so the host holds at most one shard. `dtype` defaults to the
  parameters' dtype; tokenizer files of `assets_dir` are copied along.
  """
  arch = _module_of_config(config)
  flat = {state_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  wanted = {m.path for m in arch.tensor_maps(config)}
  if set(flat) != wanted:
    raise ValueError(f"parameters do not match the {type(config).__name__}: {sorted(set(flat) ^ wanted)[:5]}")
  maps = arch.export_maps(config)
  out_dtype = np.dtype(dtype or flat[maps[0].path].dtype)
  sizes = [int(np.prod(m.hf_shape)) * out_dtype.itemsize for m in maps]
  shards = plan_shards(sizes, max_shard_bytes)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(out_dir, exist_ok=True)
  weight_map = {}
  for file, shard in zip(names, shards):
    tensors = {maps[i].hf_name: maps[i].to_hf(_to_host(flat[maps[i].path])).astype(out_dtype) for i in shard}
    if writer:
      safetensors.numpy.save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, file))
    del tensors
  if writer:
    if len(names) > 1:
      with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(arch.hf_config(config, base_config, out_dtype.name), f, indent=2, sort_keys=True)
    if assets_dir:
      copy_tokenizer_files(assets_dir, out_dir)
  return [os.path.join(out_dir, n) for n in names]


# ---- tokenizer files and vocabularies ---------------------------------------------------------

def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
  """Copies the tokenizer files present in `src_dir` to `dst_dir`; returns their names."""
  copied = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(src_dir, n))]
  os.makedirs(dst_dir, exist_ok=True)
  for name in copied:
    shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))
  return copied


def write_vocabulary(vocabulary: seqio.Vocabulary, model_dir: str) -> list[str]:
  """Writes the tokenizer files of `vocabulary` into `model_dir`/hf/, where `load_model_dir` reads
  them; returns their names (none for a vocabulary without files, such as bytes)."""
  assets = os.path.join(model_dir, ASSETS_DIR)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    os.makedirs(assets, exist_ok=True)
    shutil.copyfile(vocabulary.sentencepiece_model_file, os.path.join(assets, "spiece.model"))
    if not vocabulary.extra_ids:
      return ["spiece.model"]
    with open(os.path.join(assets, "tokenizer_config.json"), "w") as f:
      json.dump({"extra_ids": vocabulary.extra_ids}, f)  # T5's <extra_id_N> sentinels, as load_vocabulary reads them
    return ["spiece.model", "tokenizer_config.json"]
  if isinstance(vocabulary, vocabularies.HFTokenizerVocabulary):
    if os.path.isdir(vocabulary.path):  # with its tokenizer_config.json (special tokens, chat template)
      return copy_tokenizer_files(vocabulary.path, assets)
    # A bare tokenizer.json: the special tokens the vocabulary was given go into a config beside it.
    os.makedirs(assets, exist_ok=True)
    shutil.copyfile(vocabulary.path, os.path.join(assets, "tokenizer.json"))
    ids = {"eos_token": vocabulary.eos_id, "pad_token": vocabulary.pad_id, "bos_token": vocabulary.bos_id}
    with open(os.path.join(assets, "tokenizer_config.json"), "w") as f:
      json.dump({name: vocabulary.tokenizer.id_to_token(i) for name, i in ids.items() if i is not None}, f)
    return ["tokenizer.json", "tokenizer_config.json"]
  return []


def load_vocabulary(directory: str) -> seqio.Vocabulary | None:
  """The vocabulary of a model directory: spiece.model (as T5 trains), else tokenizer.json, else None."""
  spiece = os.path.join(directory, "spiece.model")
  if os.path.exists(spiece):
    extra_ids = 0
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config_path):
      with open(config_path) as f:
        extra_ids = int(json.load(f).get("extra_ids", 0))  # T5's <extra_id_N> sentinels
    return seqio.SentencePieceVocabulary(spiece, extra_ids=extra_ids)
  if os.path.exists(os.path.join(directory, "tokenizer.json")):
    return vocabularies.get_vocabulary("hf", directory)
  return None


# ---- sft_jax model directories ----------------------------------------------------------------

_GIN_CLASSES = {name: m for m in _ARCHITECTURE_MODULES for name in m.GIN_CLASSES}
_GIN_FIELD = re.compile(r"^(?:\w+/)*(?:[\w.]*\.)?(" + "|".join(_GIN_CLASSES) + r")\.(\w+)\s*=\s*(.+?)\s*$")


def _gin_bindings(path: str) -> dict[str, dict[str, Any]]:
  """{class name: {field: value}} of the literal model bindings in a flat gin file.

  A value gin wrapped over several lines (a long tuple) is joined until it parses.
  """
  bindings: dict[str, dict[str, Any]] = {}
  with open(path) as f:
    lines = list(enumerate(f, 1))
  i = 0
  while i < len(lines):
    line_number, line = lines[i]
    i += 1
    match = _GIN_FIELD.match(line.rstrip("\n"))
    if not match or match.group(2) == "config":
      continue
    text = match.group(3)
    while True:
      try:
        value = ast.literal_eval(text)
        break
      except (ValueError, SyntaxError) as e:
        if i >= len(lines) or text.count("(") + text.count("[") <= text.count(")") + text.count("]"):
          raise ValueError(f"{path}:{line_number}: {match.group(1)}.{match.group(2)} is not a literal") from e
        text += " " + lines[i][1].strip()
        i += 1
    bindings.setdefault(match.group(1), {})[match.group(2)] = value
  return bindings


def model_from_gin(path: str) -> Any:
  """The model bound in a flat gin file (a run's operative config.gin, or one `convert_to_checkpoint` wrote).

  Only literal config and `eos_id` bindings are read (`T5Config.*`, `EncoderDecoderModel.eos_id`,
  `DecoderConfig.*`, `DecoderOnlyModel.eos_id`/`bos_id`), without touching gin's global configuration.
  """
  bindings = _gin_bindings(path)
  for module in _ARCHITECTURE_MODULES:
    config_class, model_class = module.GIN_CLASSES
    if config_class in bindings:
      return module.model_from_bindings(bindings[config_class], bindings.get(model_class, {}))
  raise ValueError(f"{path}: no {' or '.join(m.GIN_CLASSES[0] for m in _ARCHITECTURE_MODULES)} bindings "
                   f"(is it a run's config.gin?)")


def t5_model_from_gin(path: str) -> t5.EncoderDecoderModel:
  """The T5 model bound in a flat gin file (see `model_from_gin`)."""
  bindings = _gin_bindings(path)
  if "T5Config" not in bindings:
    raise ValueError(f"{path}: no T5Config bindings (is it a T5 run's config.gin?)")
  return hf_t5.model_from_bindings(bindings["T5Config"], bindings.get("EncoderDecoderModel", {}))


def _model_gin(model: Any, source: str) -> str:
  lines = [f"# The network imported from {source}.", "# Rebuilds it: --gin_file=<this directory>/config.gin"]
  return "\n".join(lines + _module_of_config(model.config).model_gin(model)) + "\n"


def _manager(model_dir: str, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(model_dir), "checkpoints"), options=options)


def save_checkpoint_dir(loaded: LoadedModel, model_dir: str, *, step: int = 0) -> str:
  """Writes `loaded` as an sft_jax model directory (config.gin, orbax params at `step`, hf/ assets)."""
  os.makedirs(model_dir, exist_ok=True)
  manager = _manager(model_dir, create=True)
  data = {"step": step, "source": os.path.abspath(loaded.assets_dir or "")}
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(loaded.params),
                                             data=ocp.args.JsonSave(data)), force=True)
  manager.wait_until_finished()
  manager.close()
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, GIN_FILE), "w") as f:
      f.write(_model_gin(loaded.model, loaded.assets_dir or "memory"))
    assets = os.path.join(model_dir, ASSETS_DIR)
    if loaded.assets_dir:
      copy_tokenizer_files(loaded.assets_dir, assets)
    if loaded.hf_config is not None:
      os.makedirs(assets, exist_ok=True)
      with open(os.path.join(assets, "config.json"), "w") as f:
        json.dump(loaded.hf_config, f, indent=2, sort_keys=True)
  return model_dir


def restore_checkpoint_dir(model_dir: str, *, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
                           step: int | None = None) -> LoadedModel:
  """Restores the params of an sft_jax model directory (a converted one or a training run's) onto `mesh`."""
  gin_path = os.path.join(model_dir, GIN_FILE)
  if not os.path.exists(gin_path):
    raise FileNotFoundError(f"{model_dir}: no {GIN_FILE} to rebuild the model from")
  model = model_from_gin(gin_path)
  graphdef, abstract = abstract_model(model, mesh, rules)
  manager = _manager(model_dir, create=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{model_dir}: no checkpoint under checkpoints/")
  restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  manager.close()
  assets = os.path.join(model_dir, ASSETS_DIR)
  hf_config = None
  if os.path.exists(os.path.join(assets, "config.json")):
    hf_config = read_hf_config(assets)
  vocabulary = load_vocabulary(assets) if os.path.isdir(assets) else None
  return LoadedModel(model, graphdef, restored["params"], vocabulary, hf_config,
                     assets if os.path.isdir(assets) else None)


def is_hf_dir(path: str) -> bool:
  """True for a Hugging Face model directory (it has config.json)."""
  return os.path.exists(os.path.join(path, "config.json"))


def load_model_dir(path: str, *, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
                   step: int | None = None) -> LoadedModel:
  """A Hugging Face directory (it has config.json) or an sft_jax model directory, loaded onto `mesh`."""
  if is_hf_dir(path):
    return import_hf(path, mesh=mesh, rules=rules)
  return restore_checkpoint_dir(path, mesh=mesh, rules=rules, step=step)


def convert_to_checkpoint(hf_dir: str, model_dir: str, *, mesh: jax.sharding.Mesh,
                          rules: Sequence[tuple[str, Any]], param_dtype: str = "float32") -> str:
  """Imports a Hugging Face directory (T5, LLaMA, Mistral, Qwen2) and writes it as an sft_jax model directory."""
  return save_checkpoint_dir(import_hf(hf_dir, mesh=mesh, rules=rules, param_dtype=param_dtype), model_dir)


def export_checkpoint(model_dir: str, out_dir: str, *, mesh: jax.sharding.Mesh,
                      rules: Sequence[tuple[str, Any]], step: int | None = None, dtype: str | None = None,
                      max_shard_bytes: int = 5 << 30) -> list[str]:
  """Writes the checkpoint of an sft_jax model directory as a Hugging Face directory of its architecture."""
  loaded = restore_checkpoint_dir(model_dir, mesh=mesh, rules=rules, step=step)
  base = dict(loaded.hf_config or {})
  eos = loaded.model.eos_id
  base.setdefault("eos_token_id", eos if isinstance(eos, int) else list(eos))  # a model trained from scratch
  return save_hf(out_dir, loaded.model.config, loaded.params, base_config=base,
                 assets_dir=loaded.assets_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)

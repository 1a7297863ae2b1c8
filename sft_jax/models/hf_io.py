"""Hugging Face T5 checkpoints in and out: safetensors <-> sharded sft_jax parameters.

Import reads a local model directory (config.json plus model.safetensors, or the sharded
model.safetensors.index.json and its shards) of `T5ForConditionalGeneration` (T5 v1.0, T5 v1.1,
Flan-T5). The network is first built abstractly (`nnx.eval_shape`: shapes and shardings, no
weights); then each parameter is created with `jax.make_array_from_callback`, whose callback
reads from a memory map of the file just the slice one device holds, transposed to sft_jax's
layout. No random initialization runs and no whole-model host copy is made.

Tensors are read through memory maps of the safetensors layout rather than
`safetensors.safe_open(framework="np")`: numpy has no bfloat16, so that API raises on bf16
checkpoints ("data type 'bfloat16' not understood"), and its slices of other dtypes cost a copy.
Export writes with `safetensors.numpy`, one shard at a time.

Layouts: HF `nn.Linear` weights are [out, in]; sft_jax `DenseGeneral` kernels are [in, out]
with heads split, e.g. q.weight [H*D_head, D] -> query.kernel [D, H, D_head]. HF keeps the
relative-position table [buckets, heads] in layer 0 of each stack; sft_jax keeps one per stack
as [heads, buckets].

Head tying follows transformers 5: the decoder head is the embedding table when the checkpoint
has no `lm_head.weight` (or one equal to `shared.weight`), and decoder outputs are scaled by
d_model**-0.5 when config.json says so (`scale_decoder_outputs`, or, in older files,
`tie_word_embeddings` not false).

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
import struct
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy
import seqio

from sft_jax.data import vocabularies
from sft_jax.models import t5

SUPPORTED_ARCHITECTURES = ("T5ForConditionalGeneration",)
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GIN_FILE = "config.gin"
ASSETS_DIR = "hf"
# transformers' T5Config defaults, for keys an older config.json leaves out.
_HF_T5_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# Copies of `shared.weight` that some files carry, and a table transformers never uses.
_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


@dataclasses.dataclass
class LoadedModel:
  """A network ready to run: its model interface, graph, sharded params and vocabulary."""
  model: t5.EncoderDecoderModel
  graphdef: Any
  params: Any
  vocabulary: seqio.Vocabulary | None
  hf_config: dict | None = None  # the source config.json, carried to an export
  assets_dir: str | None = None  # where config.json and tokenizer files were found


# ---- config.json <-> T5Config ---------------------------------------------------------------

def read_hf_config(hf_dir: str) -> dict:
  """The parsed config.json of a Hugging Face model directory."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
  with open(path) as f:
    return json.load(f)


def t5_config_from_hf(hf: Mapping[str, Any], *, tied_head: bool, path: str = "config.json",
                      **overrides: Any) -> t5.T5Config:
  """The T5Config of a transformers T5 config; `tied_head` says whether the file has its own head."""
  architectures = hf.get("architectures") or []
  if hf.get("model_type") != "t5" or any(a not in SUPPORTED_ARCHITECTURES for a in architectures):
    raise ValueError(f"{path}: architecture {architectures or hf.get('model_type')!r} is not supported; "
                     f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (model_type 't5')")
  get = lambda key: hf.get(key, _HF_T5_DEFAULTS.get(key))  # noqa: E731
  # sft_jax's T5 hard-codes T5's special ids: 0 pads and starts decoding, 1 ends.
  for key, want in (("pad_token_id", 0), ("eos_token_id", 1), ("decoder_start_token_id", 0)):
    if get(key) not in (want, None):
      raise ValueError(f"{path}: {key}={get(key)!r}, sft_jax's T5 needs {want}")
  if "scale_decoder_outputs" in hf:
    scale = bool(hf["scale_decoder_outputs"])
  else:  # before transformers 5, tie_word_embeddings (default true) meant tied *and* scaled
    scale = hf.get("tie_word_embeddings", True) is not False
  fields = dict(
      vocab_size=get("vocab_size"), d_model=get("d_model"), num_heads=get("num_heads"),
      head_dim=get("d_kv"), d_ff=get("d_ff"), num_encoder_layers=get("num_layers"),
      num_decoder_layers=hf.get("num_decoder_layers") or get("num_layers"),
      relative_attention_num_buckets=get("relative_attention_num_buckets"),
      relative_attention_max_distance=get("relative_attention_max_distance"),
      dropout_rate=float(get("dropout_rate")), layer_norm_epsilon=float(get("layer_norm_epsilon")),
      feed_forward_proj=get("feed_forward_proj"), tie_word_embeddings=tied_head,
      scale_decoder_outputs=scale)
  fields.update(overrides)
  try:
    return t5.T5Config(**fields)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def hf_config_from_t5(config: t5.T5Config, base: Mapping[str, Any] | None = None,
                      dtype: str = "float32") -> dict:
  """A transformers config.json for `config`, keeping the other entries of `base`."""
  if config.absolute_positions:
    raise ValueError("T5Config.absolute_positions has no Hugging Face T5 equivalent; cannot export")
  activation, gated = t5.mlp_activation(config.feed_forward_proj)
  out = dict(base or {})
  out.update(
      architectures=list(SUPPORTED_ARCHITECTURES), model_type="t5", vocab_size=config.vocab_size,
      d_model=config.d_model, d_kv=config.head_dim, num_heads=config.num_heads, d_ff=config.d_ff,
      num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
      feed_forward_proj=config.feed_forward_proj, dense_act_fn=activation, is_gated_act=gated,
      # transformers < 5 reads tie_word_embeddings as "tied and scaled"; 5 reads both keys.
      tie_word_embeddings=config.scale_decoder_outputs,
      scale_decoder_outputs=config.scale_decoder_outputs,
      is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
      dtype=dtype)
  out.pop("torch_dtype", None)
  return out


# ---- safetensors files ----------------------------------------------------------------------

class SafetensorsDir:
  """The tensors of a directory's model.safetensors or sharded index, read lazily by memory map."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    index_path = os.path.join(hf_dir, INDEX_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(hf_dir, SINGLE_FILE)):
      files = [SINGLE_FILE]
    else:
      raise FileNotFoundError(f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors are read)")
    self._entries: dict[str, tuple[str, dict, int]] = {}
    for name in files:
      path = os.path.join(hf_dir, name)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{index_path}: lists {name}, which is missing")
      with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
      header.pop("__metadata__", None)
      for tensor, entry in header.items():
        if entry["dtype"] not in _DTYPES:
          raise ValueError(f"{path}: tensor {tensor} has unsupported dtype {entry['dtype']}")
        self._entries[tensor] = (path, entry, 8 + header_len)

  def names(self) -> list[str]:
    """All tensor names, sorted."""
    return sorted(self._entries)

  def file_of(self, name: str) -> str:
    """The file holding tensor `name`."""
    return self._entries[name][0]

  def shape(self, name: str) -> tuple[int, ...]:
    """The stored shape of tensor `name`."""
    return tuple(self._entries[name][1]["shape"])

  def view(self, name: str) -> np.ndarray:
    """A read-only memory map of tensor `name` (no bytes are read until it is indexed)."""
    path, entry, data_start = self._entries[name]
    begin, _ = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if not shape or 0 in shape:
      return np.zeros(shape, _DTYPES[entry["dtype"]])
    return np.memmap(path, dtype=_DTYPES[entry["dtype"]], mode="r", offset=data_start + begin,
                     shape=shape)


# ---- the parameter table --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One parameter: sft_jax value == hf_tensor.reshape(split).transpose(perm)."""
  hf_name: str
  path: tuple[str | int, ...]  # the parameter's path in the nnx state, e.g. ("encoder", "encoder_norm", "scale")
  hf_shape: tuple[int, ...]  # as transformers stores it
  split: tuple[int, ...]  # hf_shape with the heads axis split out, if any
  perm: tuple[int, ...]

  def to_sft(self, hf_view: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    """The slice `index` of the sft_jax parameter, read from the HF tensor."""
    hf_index = [slice(None)] * len(self.perm)
    for axis, source in enumerate(self.perm):
      hf_index[source] = index[axis]
    return np.transpose(hf_view.reshape(self.split)[tuple(hf_index)], self.perm)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """The HF tensor of a whole sft_jax parameter."""
    return np.ascontiguousarray(np.transpose(value, np.argsort(self.perm)).reshape(self.hf_shape))


def t5_tensor_maps(config: t5.T5Config) -> list[TensorMap]:
  """Every parameter of `config`'s network with its HF name and layout, in HF order."""
  d, h, k, f, v = config.d_model, config.num_heads, config.head_dim, config.d_ff, config.vocab_size
  vector = lambda name, path: TensorMap(name, path, (d,), (d,), (0,))  # noqa: E731
  linear = lambda name, path, out, inp: TensorMap(name, path, (out, inp), (out, inp), (1, 0))  # noqa: E731
  maps = [TensorMap("shared.weight", ("token_embedder", "embedding"), (v, d), (v, d), (0, 1))]
  _, gated = t5.mlp_activation(config.feed_forward_proj)
  mlp_names = ("wi_0", "wi_1") if gated else ("wi",)

  def attention(prefix, path):
    # q/k/v [H*D_head, D] -> [D, H, D_head]; o [D, H*D_head] -> [H, D_head, D].
    return [TensorMap(f"{prefix}.{hf}.weight", path + (ours, "kernel"), (h * k, d), (h, k, d), (2, 0, 1))
            for hf, ours in (("q", "query"), ("k", "key"), ("v", "value"))] + [
                TensorMap(f"{prefix}.o.weight", path + ("out", "kernel"), (d, h * k), (d, h, k), (1, 2, 0))]

  def mlp(prefix, path):
    return ([linear(f"{prefix}.{n}.weight", path + (n, "kernel"), f, d) for n in mlp_names]
            + [linear(f"{prefix}.wo.weight", path + ("wo", "kernel"), d, f)])

  for stack, num_layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
    buckets = config.relative_attention_num_buckets
    maps.append(TensorMap(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          (stack, "relpos_bias", "embedding"), (buckets, h), (buckets, h), (1, 0)))
    for i in range(num_layers):
      block, path = f"{stack}.block.{i}.layer", (stack, "layers", i)
      if stack == "encoder":
        norms = ("pre_attention_layer_norm", "pre_mlp_layer_norm")
        maps += attention(f"{block}.0.SelfAttention", path + ("attention",))
      else:
        norms = ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm")
        maps += attention(f"{block}.0.SelfAttention", path + ("self_attention",))
        maps += attention(f"{block}.1.EncDecAttention", path + ("encoder_decoder_attention",))
      maps += [vector(f"{block}.{j}.layer_norm.weight", path + (norm, "scale")) for j, norm in enumerate(norms)]
      maps += mlp(f"{block}.{len(norms) - 1}.DenseReluDense", path + ("mlp",))
    final = "encoder_norm" if stack == "encoder" else "decoder_norm"
    maps.append(vector(f"{stack}.final_layer_norm.weight", (stack, final, "scale")))
  if not config.tie_word_embeddings:
    maps.append(linear("lm_head.weight", ("decoder", "logits_dense", "kernel"), v, d))
  return maps


def _state_path(key_path: Sequence[Any]) -> tuple[str | int, ...]:
  """A pytree key path of an nnx.State leaf as the plain path of its parameter."""
  out = []
  for key in key_path:
    name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
    out.append(name)
  return tuple(out[:-1]) if out and out[-1] == "value" else tuple(out)


def abstract_model(model: t5.EncoderDecoderModel, mesh: jax.sharding.Mesh,
                   rules: Sequence[tuple[str, Any]]) -> tuple[Any, Any]:
  """(graphdef, abstract params whose leaves carry their NamedShardings on `mesh`), allocating nothing."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    module = nnx.eval_shape(lambda: model.init(0))
  graphdef, params = nnx.split(module, nnx.Param)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
      mesh, x.sharding.spec)), params)
  return graphdef, params


# ---- import ---------------------------------------------------------------------------------

def _embedding_name(files: SafetensorsDir) -> str | None:
  """The input embedding's name: shared.weight, or one of its copies in files written without it."""
  names = files.names()
  return next((n for n in ("shared.weight",) + _IGNORED[:2] if n in names), None)


def _head_is_tied(files: SafetensorsDir) -> bool:
  """True when the file has no head of its own: no lm_head.weight, or one equal to the embedding."""
  if "lm_head.weight" not in files.names():
    return True
  embedding = _embedding_name(files)
  if embedding is None or files.shape("lm_head.weight") != files.shape(embedding):
    return False
  head, shared = files.view("lm_head.weight"), files.view(embedding)
  rows = max(1, (64 << 20) // max(1, head[0].nbytes))  # compare 64 MiB at a time
  return all(np.array_equal(head[i:i + rows], shared[i:i + rows]) for i in range(0, len(head), rows))


def _resolve_names(files: SafetensorsDir, maps: list[TensorMap]) -> dict[str, str]:
  """HF name wanted -> name in the files; checks presence, shapes and leftovers."""
  names = set(files.names())
  resolved = {}
  for m in maps:
    found = _embedding_name(files) if m.hf_name == "shared.weight" else (
        m.hf_name if m.hf_name in names else None)
    if found is None:
      raise KeyError(f"{files.hf_dir}: tensor {m.hf_name} is missing (needed for {'.'.join(map(str, m.path))})")
    if files.shape(found) != m.hf_shape:
      raise ValueError(f"{files.file_of(found)}: tensor {found} has shape {files.shape(found)}, the config "
                       f"implies {m.hf_shape}")
    resolved[m.hf_name] = found
  unexpected = sorted(names - set(resolved.values()) - set(_IGNORED) - {"lm_head.weight"})
  if unexpected:
    raise ValueError(f"{files.hf_dir}: {len(unexpected)} tensors have no place in the sft_jax T5 "
                     f"(e.g. {files.file_of(unexpected[0])}: {', '.join(unexpected[:5])})")
  return resolved


def import_hf(hf_dir: str, *, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
              param_dtype: str = "float32", **config_overrides: Any) -> LoadedModel:
  """Loads a Hugging Face T5 directory into parameters sharded on `mesh` by the logical `rules`.

  Parameters are cast to `param_dtype` whatever the stored dtype; `config_overrides` set other
  T5Config fields (dtype, attention_impl, dropout_rate ...).
  """
  hf_config = read_hf_config(hf_dir)
  files = SafetensorsDir(hf_dir)
  config = t5_config_from_hf(hf_config, tied_head=_head_is_tied(files), path=os.path.join(hf_dir, "config.json"),
                             param_dtype=param_dtype, **config_overrides)
  model = t5.EncoderDecoderModel(config)
  graphdef, abstract = abstract_model(model, mesh, rules)
  maps = {m.path: m for m in t5_tensor_maps(config)}
  resolved = _resolve_names(files, list(maps.values()))

  def load(key_path, leaf):
    m = maps[_state_path(key_path)]
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


def _plan_shards(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
  shards, current, used = [], [], 0
  for i, size in enumerate(sizes):
    if current and used + size > max_shard_bytes:
      shards.append(current)
      current, used = [], 0
    current.append(i)
    used += size
  return shards + [current] if current else shards


def save_hf(out_dir: str, config: t5.T5Config, params: Any, *, base_config: Mapping[str, Any] | None = None,
            assets_dir: str | None = None, dtype: str | None = None,
            max_shard_bytes: int = 5 << 30) -> list[str]:
  """Writes `params` as a transformers T5 directory; returns the safetensors files written.

  One tensor at a time is gathered to the host and shard files are written as they fill, so
  the host holds at most one shard. `dtype` defaults to the parameters' dtype; tokenizer files
  of `assets_dir` are copied along.
  """
  flat = {_state_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  maps = t5_tensor_maps(config)
  if set(flat) != {m.path for m in maps}:
    raise ValueError(f"parameters do not match the T5Config: {sorted(set(flat) ^ {m.path for m in maps})[:5]}")
  # transformers < 5 reads a head from the file unless the config says tied-and-scaled; a copy
  # of the embedding serves it, and transformers 5 ties equal tensors back together.
  if config.tie_word_embeddings and not config.scale_decoder_outputs:
    maps.append(dataclasses.replace(maps[0], hf_name="lm_head.weight"))
  out_dtype = np.dtype(dtype or flat[maps[0].path].dtype)
  sizes = [int(np.prod(m.hf_shape)) * out_dtype.itemsize for m in maps]
  shards = _plan_shards(sizes, max_shard_bytes)
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
      json.dump(hf_config_from_t5(config, base_config, out_dtype.name), f, indent=2, sort_keys=True)
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

_GIN_T5_FIELD = re.compile(r"^(?:\w+/)*(?:[\w.]*\.)?(T5Config|EncoderDecoderModel)\.(\w+)\s*=\s*(.+?)\s*$")


def t5_model_from_gin(path: str) -> t5.EncoderDecoderModel:
  """The model bound in a flat gin file (a run's operative config.gin, or one `convert_to_checkpoint` wrote).

  Only literal `T5Config.*` and `EncoderDecoderModel.eos_id` bindings are read, without touching
  gin's global configuration.
  """
  fields, eos_id = {}, 1
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      match = _GIN_T5_FIELD.match(line)
      if not match or match.group(2) == "config":
        continue
      try:
        value = ast.literal_eval(match.group(3))
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"{path}:{line_number}: {match.group(1)}.{match.group(2)} is not a literal") from e
      if match.group(1) == "T5Config":
        fields[match.group(2)] = value
      elif match.group(2) == "eos_id":
        eos_id = value
  if not fields:
    raise ValueError(f"{path}: no T5Config bindings (is it a T5 run's config.gin?)")
  return t5.EncoderDecoderModel(t5.T5Config(**fields), eos_id=eos_id)


def _model_gin(model: t5.EncoderDecoderModel, source: str) -> str:
  lines = [f"# The network imported from {source}.", "# Rebuilds it: --gin_file=<this directory>/config.gin",
           "import sft_jax.models.t5", "", "MODEL = @t5.EncoderDecoderModel()",
           "t5.EncoderDecoderModel.config = @t5.T5Config()", f"t5.EncoderDecoderModel.eos_id = {model.eos_id}"]
  lines += [f"t5.T5Config.{f.name} = {getattr(model.config, f.name)!r}" for f in dataclasses.fields(model.config)]
  return "\n".join(lines) + "\n"


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
  model = t5_model_from_gin(gin_path)
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
  """Imports a Hugging Face T5 directory and writes it as an sft_jax model directory."""
  return save_checkpoint_dir(import_hf(hf_dir, mesh=mesh, rules=rules, param_dtype=param_dtype), model_dir)


def export_checkpoint(model_dir: str, out_dir: str, *, mesh: jax.sharding.Mesh,
                      rules: Sequence[tuple[str, Any]], step: int | None = None, dtype: str | None = None,
                      max_shard_bytes: int = 5 << 30) -> list[str]:
  """Writes the checkpoint of an sft_jax model directory as a Hugging Face T5 directory."""
  loaded = restore_checkpoint_dir(model_dir, mesh=mesh, rules=rules, step=step)
  return save_hf(out_dir, loaded.model.config, loaded.params, base_config=loaded.hf_config,
                 assets_dir=loaded.assets_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


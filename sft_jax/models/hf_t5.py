"""Hugging Face `T5ForConditionalGeneration` (T5 v1.0, T5 v1.1, Flan-T5) <-> sft_jax T5: config and tensors.

Layouts: HF `nn.Linear` weights are [out, in]; sft_jax `DenseGeneral` kernels are [in, out]
with heads split, e.g. q.weight [H*D_head, D] -> query.kernel [D, H, D_head]. HF keeps the
relative-position table [buckets, heads] in layer 0 of each stack; sft_jax keeps one per stack
as [heads, buckets].

Head tying follows transformers 5: the decoder head is the embedding table when the checkpoint
has no `lm_head.weight` (or one equal to `shared.weight`), and decoder outputs are scaled by
d_model**-0.5 when config.json says so (`scale_decoder_outputs`, or, in older files,
`tie_word_embeddings` not false).

`hf_io` drives import and export through the functions every architecture module defines:
`model_from_hf`, `tensor_maps`, `export_maps`, `resolve_name`, `is_ignored`, `hf_config`,
`model_gin` and `model_from_bindings`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from sft_jax.models import hf_tensors
from sft_jax.models import t5
from sft_jax.models.hf_tensors import TensorMap

ARCHITECTURES = ("T5ForConditionalGeneration",)
MODEL_TYPES = ("t5",)
GIN_CLASSES = ("T5Config", "EncoderDecoderModel")  # (config class, model interface class)
# transformers' T5Config defaults, for keys an older config.json leaves out.
_HF_T5_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# Copies of `shared.weight` that some files carry, and a table transformers never uses.
_EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = _EMBEDDING_COPIES + ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# ---- config.json <-> T5Config ---------------------------------------------------------------

def t5_config_from_hf(hf: Mapping[str, Any], *, tied_head: bool, path: str = "config.json",
                      **overrides: Any) -> t5.T5Config:
  """The T5Config of a transformers T5 config; `tied_head` says whether the file has its own head."""
  architectures = hf.get("architectures") or []
  if hf.get("model_type") != "t5" or any(a not in ARCHITECTURES for a in architectures):
    raise ValueError(f"{path}: architecture {architectures or hf.get('model_type')!r} is not supported; "
                     f"supported: {', '.join(ARCHITECTURES)} (model_type 't5')")
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


def hf_config(config: t5.T5Config, base: Mapping[str, Any] | None = None,
              dtype: str = "float32") -> dict:
  """A transformers config.json for `config`, keeping the other entries of `base`."""
  if config.absolute_positions:
    raise ValueError("T5Config.absolute_positions has no Hugging Face T5 equivalent; cannot export")
  activation, gated = t5.mlp_activation(config.feed_forward_proj)
  out = dict(base or {})
  out.update(
      architectures=list(ARCHITECTURES), model_type="t5", vocab_size=config.vocab_size,
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


hf_config_from_t5 = hf_config


# ---- the parameter table --------------------------------------------------------------------

def tensor_maps(config: t5.T5Config) -> list[TensorMap]:
  """Every parameter of `config`'s network with its HF name and layout, in HF order."""
  d, h, k, f, v = config.d_model, config.num_heads, config.head_dim, config.d_ff, config.vocab_size
  linear = hf_tensors.linear
  maps = [TensorMap("shared.weight", ("token_embedder", "embedding"), (v, d), (v, d), (0, 1))]
  _, gated = t5.mlp_activation(config.feed_forward_proj)
  mlp_names = ("wi_0", "wi_1") if gated else ("wi",)

  def attention(prefix, path):
    return [hf_tensors.heads_in(f"{prefix}.{hf}.weight", path + (ours, "kernel"), h, k, d)
            for hf, ours in (("q", "query"), ("k", "key"), ("v", "value"))] + [
                hf_tensors.heads_out(f"{prefix}.o.weight", path + ("out", "kernel"), h, k, d)]

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
      maps += [hf_tensors.vector(f"{block}.{j}.layer_norm.weight", path + (norm, "scale"), d)
               for j, norm in enumerate(norms)]
      maps += mlp(f"{block}.{len(norms) - 1}.DenseReluDense", path + ("mlp",))
    final = "encoder_norm" if stack == "encoder" else "decoder_norm"
    maps.append(hf_tensors.vector(f"{stack}.final_layer_norm.weight", (stack, final, "scale"), d))
  if not config.tie_word_embeddings:
    maps.append(linear("lm_head.weight", ("decoder", "logits_dense", "kernel"), v, d))
  return maps


t5_tensor_maps = tensor_maps


def export_maps(config: t5.T5Config) -> list[TensorMap]:
  """What export writes: the parameter table, plus a head copy transformers < 5 needs."""
  maps = tensor_maps(config)
  # transformers < 5 reads a head from the file unless the config says tied-and-scaled; a copy
  # of the embedding serves it, and transformers 5 ties equal tensors back together.
  if config.tie_word_embeddings and not config.scale_decoder_outputs:
    maps.append(dataclasses.replace(maps[0], hf_name="lm_head.weight"))
  return maps


# ---- import ---------------------------------------------------------------------------------

def resolve_name(files: hf_tensors.SafetensorsDir, hf_name: str) -> str | None:
  """The name under which `hf_name` is stored: shared.weight may only be there as a copy."""
  names = set(files.names())
  candidates = (hf_name,) + (_EMBEDDING_COPIES if hf_name == "shared.weight" else ())
  return next((n for n in candidates if n in names), None)


def is_ignored(name: str, config: t5.T5Config) -> bool:
  """Tensors a file may hold that the network does not use (a tied head is read from the table)."""
  return name in _IGNORED or name == "lm_head.weight"


def _head_is_tied(files: hf_tensors.SafetensorsDir) -> bool:
  """True when the file has no head of its own: no lm_head.weight, or one equal to the embedding."""
  if "lm_head.weight" not in files.names():
    return True
  embedding = resolve_name(files, "shared.weight")
  return embedding is not None and files.equal("lm_head.weight", embedding)


def model_from_hf(hf: Mapping[str, Any], files: hf_tensors.SafetensorsDir, *, path: str,
                  **overrides: Any) -> t5.EncoderDecoderModel:
  """The model interface of a transformers T5 directory (config.json plus its tensors)."""
  return t5.EncoderDecoderModel(t5_config_from_hf(hf, tied_head=_head_is_tied(files), path=path, **overrides))


# ---- gin --------------------------------------------------------------------------------------

def model_gin(model: t5.EncoderDecoderModel) -> list[str]:
  """Gin lines that rebuild `model`."""
  lines = ["import sft_jax.models.t5", "", "MODEL = @t5.EncoderDecoderModel()",
           "t5.EncoderDecoderModel.config = @t5.T5Config()", f"t5.EncoderDecoderModel.eos_id = {model.eos_id}"]
  return lines + [f"t5.T5Config.{f.name} = {getattr(model.config, f.name)!r}"
                  for f in dataclasses.fields(model.config)]


def model_from_bindings(config_fields: dict[str, Any], model_fields: dict[str, Any]) -> t5.EncoderDecoderModel:
  """The model of literal `T5Config.*` and `EncoderDecoderModel.eos_id` gin bindings."""
  return t5.EncoderDecoderModel(t5.T5Config(**config_fields), eos_id=model_fields.get("eos_id", 1))
